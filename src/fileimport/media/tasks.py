"""Background work of the media library: deleting blobs no entry references.

Blobs are content-addressed and written before the transaction that makes an
entry point at them, so a blob can be left without a reference: the bytes an
update replaced, or a download stored just before its worker was killed and
whose file then failed on the re-run. A blob is deleted only when no entry
references it AND it was last written more than ``older_than`` ago: every
import writes its blob again or refreshes its time of writing (see
``FileImporter._store``), so a blob that an import is about to reference is
always younger than that, and the deletion itself re-checks the blob's age
(``delete_if_written_before``) after the reference check, so an import that
rewrites it meanwhile keeps it. Part files that a killed writer left (see
``ObjectStorage.remove_abandoned_parts``) go first, whatever their age; part
files of the old layout (``.<name>.part-<pid>-<n>`` beside the blob) are
listed and swept like blobs.
``older_than`` must exceed the longest time between an import storing its
blob and committing its entry; the CLI refuses less than ten minutes unless
told that no import is running.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import structlog

from fileimport.core.db import utcnow
from fileimport.core.runtime import Runtime
from fileimport.core.storage import BLOB_PREFIX, StoredBlob, is_set_aside
from fileimport.media import repository

log = structlog.get_logger(__name__)

CHUNK = 500


async def delete_unreferenced_blobs(runtime: Runtime, older_than: timedelta) -> int:
    """Delete blobs under ``sha256/`` that no media entry references and that are older
    than ``older_than``; returns how many were deleted. Raises StorageError."""
    cutoff = utcnow() - older_than
    deleted = await runtime.storage.remove_abandoned_parts()
    chunk: list[StoredBlob] = []

    async def sweep(blobs: list[StoredBlob]) -> int:
        referenced = await runtime.db.run_read(
            partial(repository.count_references, asset_keys=[b.key for b in blobs])
        )
        removed = 0
        for blob in blobs:
            if is_set_aside(blob.key):
                # Left by a sweep killed mid-deletion: it may be a blob an import just refreshed.
                if await runtime.storage.restore_set_aside(blob.key):
                    log.warning("media.blob.restored", key=blob.key)
                continue
            if blob.key in referenced or blob.last_modified >= cutoff:
                continue
            if await runtime.storage.delete_if_written_before(blob.key, cutoff):
                removed += 1
                log.info("media.blob.deleted", key=blob.key, size=blob.size)
        return removed

    async for blob in runtime.storage.list_blobs(BLOB_PREFIX):
        chunk.append(blob)
        if len(chunk) >= CHUNK:
            deleted += await sweep(chunk)
            chunk = []
    if chunk:
        deleted += await sweep(chunk)
    return deleted
