"""The per-file import pipeline.

For each file: fetch from the origin (streamed to a spool file, SHA-256 on the
way; a body of at most 64 KiB stays in memory), sniff the MIME type from the
bytes, choose or check the media type, enforce its size limit, read pixel
size or duration, store the bytes under their content address, then create,
update or skip the media entry and record the file's result in one
transaction. Every failure ends as a ``failed``
result with a stable ``code`` and a ``reason`` a person can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import anyio
import structlog
from pydantic import ByteSize

from fileimport.core.db import DATABASE_UNAVAILABLE
from fileimport.core.fetcher import FetchedFile, FetchError, NotModified, OriginFetcher
from fileimport.core.metrics import BYTES_FETCHED, FILE_SECONDS, FILES_IMPORTED
from fileimport.core.probe import ContentProbe, ProbeError, probe_file, sniff_mime_type
from fileimport.core.runtime import Runtime
from fileimport.core.storage import StorageError, blob_key
from fileimport.imports.recorder import ResultAlreadyRecorded, ResultRecorder
from fileimport.imports.repository import LeasedFile
from fileimport.imports.states import FileStatus
from fileimport.media.repository import KnownEntry
from fileimport.media.service import (
    EntryChange,
    EntryImport,
    OriginValidators,
    StaleNotModified,
    StoredAsset,
    Unchanged,
)
from fileimport.projects.config import MediaTypeConfig, ProjectConfig

log = structlog.get_logger(__name__)


class FileRejected(Exception):
    """The file cannot be imported; ``code`` is stable, ``reason`` is for a person."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class JobContext:
    """What every file of one job shares."""

    job_id: str
    project_id: int
    system_name: str
    started_at: datetime  # the job's startedAt: an older job's import never undoes a newer's
    config: ProjectConfig


# Types whose files are opened to read pixel size or duration (in a thread).
PROBED_TYPES = ("image/", "audio/", "video/")

PROBE_ON_LOOP_BYTES = 4 * 1024
"""In-memory bodies up to this size are probed on the event loop, not in a thread.

An icon's header parses in about 30 us, less than a hop to a thread. A file
crafted to be slow to parse (a JPEG of nothing but markers) took 2.2 ms at
4 KiB and 15 ms at 64 KiB here: this bounds such a stall of the loop.
"""


@dataclass(frozen=True)
class _Downloaded:
    """A file fetched and inspected, not yet stored; ``content`` `Unchanged` after a 304."""

    media_type: MediaTypeConfig
    content: tuple[FetchedFile, ContentProbe] | Unchanged
    origin: OriginValidators
    attempts: int


@dataclass
class _ContentTypeLimit:
    """`fileimport.core.fetcher.HeadLimit` for a file posted without ``mediaType``: the size limit
    of the media type its first bytes show, and that type, or None when no type takes them.
    Keeps the MIME type it sniffed, which `FileImporter._inspect` reuses: libmagic reads the
    same 64 KiB once per file, not twice."""

    config: ProjectConfig
    mime_type: str | None = None

    def __call__(self, head: bytes) -> tuple[int, str] | None:
        self.mime_type = sniff_mime_type(head)
        media_type = self.config.media_type_for(self.mime_type)
        if media_type is None:
            return None
        return int(media_type.max_file_size), f"media type '{media_type.handle}' ({self.mime_type})"


class FileImporter:
    """Imports single files of a job; safe to call concurrently.

    The fetcher bounds the downloads in flight (``worker_concurrency`` in
    all, ``fetch_per_origin_concurrency`` per origin); how many files are
    between their claim and their result is bounded by the files a worker
    holds (`Worker`). Storing a file (its fsync) and committing its result
    (shared with other files, see ``ResultRecorder``) happen after its
    download slot is free. ``on_slot_idle`` is called when a file's download
    and inspection end and fewer files than there are download slots are
    downloading or waiting to: time to claim more.
    """

    def __init__(
        self,
        runtime: Runtime,
        fetcher: OriginFetcher,
        recorder: ResultRecorder,
        *,
        on_slot_idle: Callable[[], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.fetcher = fetcher
        self.recorder = recorder
        self.slots = runtime.settings.worker_concurrency
        self.on_slot_idle = on_slot_idle
        self.queued = 0  # files downloading or waiting to (for an origin's slot, a download slot)

    async def import_file(self, ctx: JobContext, file: LeasedFile, existing: KnownEntry | None) -> FileStatus:
        """Import ``file`` and record its final result; returns that result.

        ``existing`` is the entry with the file's key when the job started (for
        a conditional request); the upsert re-reads it under lock.
        """
        started = time.perf_counter()
        status, code = await self._import_and_record(ctx, file, existing)
        FILES_IMPORTED.labels(status=status, code=code or "").inc()
        FILE_SECONDS.observe(time.perf_counter() - started)
        return status

    async def _import_and_record(
        self, ctx: JobContext, file: LeasedFile, existing: KnownEntry | None
    ) -> tuple[FileStatus, str | None]:
        bound = log.bind(job_id=ctx.job_id, external_id=file.external_id)
        attempts = 0
        try:
            status, media_id, attempts = await self._import(ctx, file, existing)
        except (FetchError, ProbeError, FileRejected) as exc:
            attempts = getattr(exc, "attempts", attempts) or attempts
            reason = exc.reason
            if isinstance(exc, FetchError) and exc.retryable and exc.attempts > 1:
                # Says that the fault lasted (and that a later re-run may help).
                reason = f"{reason.rstrip('.')}; gave up after {exc.attempts} tries."
            bound.info("import.file.failed", code=exc.code, reason=reason)
            return await self._record_failure(ctx, file, exc.code, reason, attempts), exc.code
        except ResultAlreadyRecorded:
            bound.info("import.file.already_recorded")
            return FileStatus.PENDING, None  # the result is another worker's: none recorded here
        except StorageError as exc:
            # Not this file's fault: a full disk, a read-only mount, the bucket
            # unreachable. Failing the file would burn through the backlog in
            # seconds; the worker hands the claim back and waits (`Worker`).
            bound.warning("import.file.not_stored", error=str(exc), cause=repr(exc.__cause__))
            raise
        except DATABASE_UNAVAILABLE as exc:
            # Nor this: the database went away, or a lock or the pool timed
            # out. Its result cannot be written now; failing the file
            # (internal_error) would be final once the database is back. The
            # claim is handed back, or its lease expires, and the file is
            # imported again.
            bound.warning("import.file.not_recorded", error=f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            bound.exception("import.file.crashed")
            reason = f"Unexpected error while importing ({type(exc).__name__}); see the service log."
            return await self._record_failure(ctx, file, "internal_error", reason, attempts), "internal_error"
        bound.info("import.file.imported", status=status, media_id=media_id)
        return status, None

    async def _import(
        self, ctx: JobContext, file: LeasedFile, existing: KnownEntry | None
    ) -> tuple[FileStatus, str, int]:
        got: _Downloaded | None = None
        try:
            self.queued += 1
            try:
                got = await self._download(ctx, file, existing)
            finally:
                self.queued -= 1
                if self.queued < self.slots and self.on_slot_idle is not None:
                    self.on_slot_idle()
            # Storing waits on the disk (fsync), not on the origin: the slot
            # already serves the next download (bench case (a): the fsyncs of
            # a small file and its folder took 13 ms of the 17 ms it held a slot).
            content = got.content
            asset = content if isinstance(content, Unchanged) else await self._store(*content)
        finally:
            if got is not None and not isinstance(got.content, Unchanged) and got.content[0].path is not None:
                got.content[0].path.unlink(missing_ok=True)
        try:
            return await self._save(ctx, file, got.media_type, asset, got.origin, got.attempts)
        except StaleNotModified:
            # Another import changed the entry's blob after this one read its
            # validators: the 304 says nothing of the bytes it holds now.
            log.info("import.file.not_modified_stale", job_id=ctx.job_id, external_id=file.external_id)
            return await self._import(ctx, file, existing=None)  # unconditional this time

    async def _download(self, ctx: JobContext, file: LeasedFile, existing: KnownEntry | None) -> _Downloaded:
        """Fetch and inspect the file; ``content`` `Unchanged` when the origin answered 304.

        On success the caller owns the spool file; on error it is already gone.
        """
        declared = self._declared_media_type(ctx, file)
        max_bytes = (
            int(declared.max_file_size)
            if declared
            else max(int(m.max_file_size) for m in ctx.config.media_types)
        )
        conditional = existing is not None and existing.source_url == file.url
        # Without a declared type, the limit is the largest type's until the
        # content says which type it is (a 5 GB "image" stops at the image limit).
        content_limit = None if declared else _ContentTypeLimit(ctx.config)
        result = await self.fetcher.fetch(
            file.url,
            max_bytes=max_bytes,
            etag=existing.origin_etag if conditional and existing else None,
            last_modified=existing.origin_last_modified if conditional and existing else None,
            limit_for_head=content_limit,
        )
        if (
            isinstance(result, NotModified)
            and existing is not None
            and not await self.runtime.storage.exists(existing.asset_key)
        ):
            # The origin's copy is unchanged but ours is gone (deleted by
            # hand, a lost disk): download it whole again, which repairs it.
            log.warning("import.file.blob_missing", job_id=ctx.job_id, key=existing.asset_key)
            result = await self.fetcher.fetch(file.url, max_bytes=max_bytes)
        if isinstance(result, NotModified):
            assert existing is not None  # noqa: S101 - only conditional requests get a 304
            media_type = declared or ctx.config.media_type(existing.media_type)
            if media_type is None:
                raise FileRejected(
                    "unsupported_type", f"Media type '{existing.media_type}' is no longer configured."
                )
            self._check_metadata(media_type, file)
            origin = OriginValidators(file.url, result.etag, result.last_modified)
            return _Downloaded(media_type, Unchanged(existing.asset_key), origin, result.attempts)
        BYTES_FETCHED.inc(result.size)
        try:
            sniffed = content_limit.mime_type if content_limit else None
            media_type, probe = await self._inspect(ctx, file, declared, result, sniffed)
        except BaseException:
            if result.path is not None:
                result.path.unlink(missing_ok=True)
            raise
        origin = OriginValidators(file.url, result.etag, result.last_modified)
        return _Downloaded(media_type, (result, probe), origin, result.attempts)

    def _declared_media_type(self, ctx: JobContext, file: LeasedFile) -> MediaTypeConfig | None:
        if file.media_type is None:
            return None
        media_type = ctx.config.media_type(file.media_type)
        if media_type is None:
            raise FileRejected("unknown_media_type", f"Media type '{file.media_type}' is not configured.")
        return media_type

    async def _inspect(
        self,
        ctx: JobContext,
        file: LeasedFile,
        declared: MediaTypeConfig | None,
        fetched: FetchedFile,
        sniffed: str | None = None,
    ) -> tuple[MediaTypeConfig, ContentProbe]:
        """The file's media type and probe; ``sniffed``: its MIME type, when already read from
        ``fetched.head``. Raises `FileRejected` (empty, type, size, metadata) or ProbeError."""
        if fetched.size == 0:
            raise FileRejected("empty_file", f"The origin sent an empty body for {file.url}.")
        mime_type = sniffed or sniff_mime_type(fetched.head)
        if declared is not None:
            media_type = declared
            if not media_type.accepts_mime_type(mime_type):
                accepted = ", ".join(media_type.allowed_mime_types) or f"{media_type.type} files"
                raise FileRejected(
                    "type_mismatch",
                    f"The file's content is {mime_type}, but media type '{media_type.handle}' "
                    f"accepts {accepted} (the origin said {fetched.content_type or 'nothing'}).",
                )
        else:
            chosen = ctx.config.media_type_for(mime_type)
            if chosen is None:
                raise FileRejected(
                    "unsupported_type", f"No configured media type accepts {mime_type} content."
                )
            media_type = chosen
        if fetched.size > media_type.max_file_size:
            raise FileRejected(
                "too_large",
                f"The file is {ByteSize(fetched.size).human_readable()}, over the "
                f"{media_type.max_file_size.human_readable()} "
                f"limit of media type '{media_type.handle}'.",
            )
        self._check_metadata(media_type, file)
        if not mime_type.startswith(PROBED_TYPES):
            probe = ContentProbe(mime_type, None, None, None)
        elif fetched.path is None and fetched.size <= PROBE_ON_LOOP_BYTES:
            probe = probe_file(fetched.head, mime_type)
        else:
            source = fetched.head if fetched.path is None else fetched.path
            probe = await anyio.to_thread.run_sync(probe_file, source, mime_type)
        return media_type, probe

    @staticmethod
    def _check_metadata(media_type: MediaTypeConfig, file: LeasedFile) -> None:
        problems = media_type.metadata_problems(file.metadata_)
        if problems:
            listed = "; ".join(f"{key} {problem}" for key, problem in sorted(problems.items()))
            raise FileRejected(
                "invalid_metadata", f"Metadata does not fit media type '{media_type.handle}': {listed}."
            )

    async def _store(self, fetched: FetchedFile, probe: ContentProbe) -> StoredAsset:
        key = blob_key(fetched.sha256)
        # Content-addressed: the same bytes land on the same blob. One stored
        # already is not written again, but its time of writing is refreshed,
        # which keeps a blob being re-imported out of reach of an orphan sweep.
        if fetched.path is None:
            await self.runtime.storage.put_bytes(key, fetched.head, content_addressed=True)
        else:
            await self.runtime.storage.put_file(key, fetched.path, content_addressed=True)
        return StoredAsset(
            key=key,
            sha256=fetched.sha256,
            size=fetched.size,
            mime_type=probe.mime_type,
            width=probe.width,
            height=probe.height,
            duration=probe.duration,
        )

    async def _save(
        self,
        ctx: JobContext,
        file: LeasedFile,
        media_type: MediaTypeConfig,
        asset: StoredAsset | Unchanged,
        origin: OriginValidators,
        attempts: int,
    ) -> tuple[FileStatus, str, int]:
        change = EntryChange(
            system_name=ctx.system_name,
            external_id=file.external_id,
            file_name=file.file_name,
            metadata=file.metadata_,
            media_type=media_type.handle,
        )
        recorded = await self.recorder.record_import(
            ctx.job_id, ctx.project_id, file.id, EntryImport(change, asset, origin, ctx.started_at), attempts
        )
        assert recorded.media_id is not None  # noqa: S101 - an import always names its entry
        return recorded.status, recorded.media_id, attempts

    async def _record_failure(
        self, ctx: JobContext, file: LeasedFile, code: str, reason: str, attempts: int
    ) -> FileStatus:
        try:
            await self.recorder.record_failure(ctx.job_id, ctx.project_id, file.id, code, reason, attempts)
        except ResultAlreadyRecorded:
            log.info("import.file.already_recorded", job_id=ctx.job_id, external_id=file.external_id)
        return FileStatus.FAILED
