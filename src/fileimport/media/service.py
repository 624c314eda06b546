"""Create, update or skip a media library entry (SPEC.md "Create, update or skip").

The key is (project, ``systemName``, ``externalId``). No entry: create. An
entry whose SHA-256, file name, metadata and media type all equal the import's:
unchanged (the import reports ``skipped``, reason ``already exists``). Anything
changed: update in place, same id, ``version`` + 1.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast
from urllib.parse import quote

from sqlalchemy import Table, insert, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fileimport.core.db import new_id, utcnow
from fileimport.media import repository
from fileimport.media.models import MAX_ETAG, MAX_LAST_MODIFIED, MediaEntry
from fileimport.media.schemas import AssetOut, MediaEntryOut


@dataclass(frozen=True)
class StoredAsset:
    """A file as stored: content address, MIME type, size in bytes, pixels, seconds."""

    key: str
    sha256: str
    size: int
    mime_type: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None


@dataclass(frozen=True)
class OriginValidators:
    """What the origin said about the bytes, for conditional re-imports (RFC 9110 §13)."""

    url: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Unchanged:
    """What a 304 Not Modified stands for in place of a `StoredAsset`: the origin's copy is the one
    the entry held, as blob ``asset_key``, when the request's validators were read from it."""

    asset_key: str


class StaleNotModified(Exception):
    """A 304 Not Modified no longer says what the entry holds: another import changed its blob
    (or the entry went) between reading the validators and the answer. Download it again."""


@dataclass(frozen=True)
class EntryChange:
    """The fields an import sets on an entry."""

    system_name: str
    external_id: str
    file_name: str
    metadata: dict[str, Any]
    media_type: str


class UpsertAction(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SUPERSEDED = "superseded"  # a job started later already imported the key: nothing changed


@dataclass(frozen=True)
class UpsertOutcome:
    media_id: str
    version: int
    action: UpsertAction


def _storable(origin: OriginValidators) -> tuple[str | None, str | None]:
    """The validators worth keeping: one longer than any sane origin sends is dropped, not stored cut
    (a cut ETag would never match; without it the next import is simply unconditional)."""
    etag = origin.etag if origin.etag and len(origin.etag) <= MAX_ETAG else None
    last_modified = (
        origin.last_modified
        if origin.last_modified and len(origin.last_modified) <= MAX_LAST_MODIFIED
        else None
    )
    return etag, last_modified


def _differs(entry: MediaEntry, change: EntryChange, asset: StoredAsset | Unchanged) -> bool:
    return (
        (isinstance(asset, StoredAsset) and asset.sha256 != entry.sha256)
        or entry.file_name != change.file_name
        or entry.metadata_ != change.metadata
        or entry.media_type != change.media_type
    )


def _apply(entry: MediaEntry, item: EntryImport) -> None:
    change, asset, origin = item.change, item.asset, item.origin
    entry.job_started_at = item.job_started_at
    entry.file_name = change.file_name
    entry.metadata_ = change.metadata
    entry.media_type = change.media_type
    if isinstance(asset, StoredAsset):
        entry.asset_key = asset.key
        entry.sha256 = asset.sha256
        entry.size = asset.size
        entry.mime_type = asset.mime_type
        entry.width = asset.width
        entry.height = asset.height
        entry.duration = asset.duration
    entry.source_url = origin.url
    entry.origin_etag, entry.origin_last_modified = _storable(origin)


def _check_unchanged(entry: MediaEntry | None, asset: StoredAsset | Unchanged) -> None:
    """Raise `StaleNotModified` when ``asset`` is a 304 for a blob the entry (locked) no longer holds."""
    if isinstance(asset, Unchanged) and (entry is None or entry.asset_key != asset.asset_key):
        raise StaleNotModified(
            "the entry's blob changed after its validators were read" if entry else "the entry is gone"
        )


def _superseded(entry: MediaEntry | None, job_started_at: datetime) -> bool:
    """Whether a job started after ``job_started_at`` already imported the entry's key."""
    return entry is not None and entry.job_started_at is not None and job_started_at < entry.job_started_at


def _leave(entry: MediaEntry, item: EntryImport) -> UpsertOutcome:
    """Record that ``item`` found the entry as it is: its origin's URL and validators (the
    latest answer, which the next conditional request must go to), and its job, so that an
    older job does not undo what this one confirmed."""
    entry.source_url = item.origin.url
    entry.origin_etag, entry.origin_last_modified = _storable(item.origin)
    entry.job_started_at = item.job_started_at
    return UpsertOutcome(entry.id, entry.version, UpsertAction.UNCHANGED)


def _update(entry: MediaEntry, item: EntryImport) -> UpsertOutcome:
    _apply(entry, item)
    entry.version += 1
    entry.updated_at = utcnow()
    return UpsertOutcome(entry.id, entry.version, UpsertAction.UPDATED)


def upsert_entry(session: Session, project_id: int, item: EntryImport) -> UpsertOutcome:
    """Create, update or leave the entry for ``item``'s key; flushes, never commits.

    ``item.asset`` `Unchanged` means the origin answered 304 Not Modified: the
    bytes are the entry's, if it still holds that blob (else raises
    `StaleNotModified`). An entry last imported by a job started after
    ``item``'s is left as it is (`UpsertAction.SUPERSEDED`): jobs finish in
    any order, and the newer one's file wins. Two transactions racing on one
    key: the loser's insert hits the unique constraint inside a savepoint and
    it continues as an update. Sync: run it in `Database.run_in_transaction`
    or with ``AsyncSession.run_sync``.
    """
    change, asset = item.change, item.asset
    key = {(change.system_name, change.external_id)}
    entry = repository.lock_entries_by_keys(session, project_id, key).get(next(iter(key)))
    if entry is None:
        _check_unchanged(entry, asset)
        assert isinstance(asset, StoredAsset)  # noqa: S101 - `_check_unchanged`
        entry = _new_entry(project_id, item, asset)
        try:
            with session.begin_nested():
                session.add(entry)
        except IntegrityError:
            entry = repository.lock_entries_by_keys(session, project_id, key).get(next(iter(key)))
            if entry is None:  # pragma: no cover - the constraint said it exists
                raise
        else:
            return UpsertOutcome(entry.id, entry.version, UpsertAction.CREATED)
    outcome = _change(entry, item)
    session.flush()
    return outcome


def _change(entry: MediaEntry, item: EntryImport) -> UpsertOutcome:
    """What ``item`` does to an existing ``entry`` (locked); raises `StaleNotModified`."""
    if _superseded(entry, item.job_started_at):
        return UpsertOutcome(entry.id, entry.version, UpsertAction.SUPERSEDED)
    _check_unchanged(entry, item.asset)
    if not _differs(entry, item.change, item.asset):
        return _leave(entry, item)
    return _update(entry, item)


@dataclass(frozen=True)
class EntryImport:
    """One import's change to the library: ``asset`` `Unchanged` after a 304 Not Modified;
    ``job_started_at`` is when its job was posted (an older job's import never undoes a newer's)."""

    change: EntryChange
    asset: StoredAsset | Unchanged
    origin: OriginValidators
    job_started_at: datetime


def upsert_entries(session: Session, project_id: int, imports: Sequence[EntryImport]) -> list[UpsertOutcome]:
    """``upsert_entry`` for many imports in one round of statements; flushes, never commits.

    One locking SELECT for every key, then the changed entries in one flush
    and the new ones in one INSERT; outcomes in the order of ``imports``. A key
    named twice is created by the first and updated or left by the second.
    Raises IntegrityError when a concurrent transaction created one of the
    keys first: the caller then retries those imports one by one with
    ``upsert_entry``, which resolves that race within its transaction (and
    raises `StaleNotModified` for a 304 that no longer applies).
    """
    keys = {(i.change.system_name, i.change.external_id) for i in imports}
    entries = repository.lock_entries_by_keys(session, project_id, keys)
    created: list[MediaEntry] = []
    outcomes: list[UpsertOutcome] = []
    for item in imports:
        change, asset = item.change, item.asset
        key = (change.system_name, change.external_id)
        entry = entries.get(key)
        if entry is None:
            _check_unchanged(entry, asset)
            assert isinstance(asset, StoredAsset)  # noqa: S101 - `_check_unchanged`
            entry = _new_entry(project_id, item, asset)
            entries[key] = entry
            created.append(entry)
            outcomes.append(UpsertOutcome(entry.id, entry.version, UpsertAction.CREATED))
        else:
            outcomes.append(_change(entry, item))
    session.flush()  # the changed entries (loaded, so tracked by the session)
    if created:
        # Core executemany: the new entries are plain rows, and the ORM's unit
        # of work cost more than the rest of the batch (bench case (a)). A key
        # created meanwhile by another transaction raises IntegrityError.
        session.execute(insert(_ENTRIES), [_row_of(entry) for entry in created])
    return outcomes


def _new_entry(project_id: int, item: EntryImport, asset: StoredAsset) -> MediaEntry:
    """The entry ``item`` creates (``asset``: its stored bytes, never `Unchanged`)."""
    change = item.change
    now = utcnow()
    entry = MediaEntry(
        id=new_id("m_"),
        project_id=project_id,
        system_name=change.system_name,
        external_id=change.external_id,
        version=1,
        created_at=now,
        updated_at=now,
    )
    _apply(entry, item)
    return entry


_ENTRIES = cast(Table, MediaEntry.__table__)  # a declarative class maps a Table
_ENTRY_COLUMNS = [(attr.key, attr.columns[0].name) for attr in inspect(MediaEntry).column_attrs]


def _row_of(entry: MediaEntry) -> dict[str, Any]:
    """The entry's values by column name (``metadata``, not ``metadata_``), for a Core insert."""
    return {column: getattr(entry, key) for key, column in _ENTRY_COLUMNS}


def asset_url(public_url: str, entry: MediaEntry) -> str:
    """Absolute URL of the entry's bytes: ``{public_url}/assets/{mediaId}/{download name}``."""
    return f"{public_url.rstrip('/')}/assets/{entry.id}/{quote(download_filename(entry))}"


_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "image/avif": ".avif",
    "image/tiff": ".tif",
    "application/pdf": ".pdf",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "text/plain": ".txt",
}
# Other spellings of a type's own extension that a download name may keep as it is. A fixed
# list, not mimetypes' (which holds .bat for text/plain and .exe for octet-stream, and
# differs by host): "setup.exe" served as bytes stays "setup.exe.bin".
_SAME_EXTENSIONS = {
    "image/jpeg": (".jpeg", ".jpe"),
    "image/tiff": (".tiff",),
    "audio/mpeg": (".mpga",),
    "video/mp4": (".m4v",),
    "audio/ogg": (".oga", ".opus"),
}


MAX_FILENAME_BYTES = 255
"""Longest download name, in bytes of UTF-8: the file name limit (NAME_MAX) of
ext4, XFS, APFS and most other file systems a browser saves into."""


def download_filename(entry: MediaEntry) -> str:
    """``fileName`` plus the extension of the stored MIME type, unless it has one of that type
    already (``.jpeg`` and ``.JPG`` are kept for ``image/jpeg``; ``setup.exe`` stored as bytes
    becomes ``setup.exe.bin``).

    Slashes become ``_``. A name over `MAX_FILENAME_BYTES` bytes of UTF-8 (a
    ``fileName`` of 255 characters, many of them non-ASCII, can be 1,020) is
    cut at a character boundary before its extension, so that it can be
    saved as it is offered.
    """
    extension = _EXTENSIONS.get(entry.mime_type) or mimetypes.guess_extension(entry.mime_type) or ""
    name = entry.file_name.replace("/", "_").replace("\\", "_")
    own = [e for e in (extension, *_SAME_EXTENSIONS.get(entry.mime_type, ())) if e]
    for candidate in sorted(own, key=len, reverse=True):
        if name.lower().endswith(candidate):
            name, extension = name[: -len(candidate)], name[-len(candidate) :]
            break
    budget = MAX_FILENAME_BYTES - len(extension.encode())
    # Cut bytes, then drop a character the cut split ("ignore" drops only its partial bytes).
    return name.encode()[:budget].decode(errors="ignore") + extension


def to_schema(entry: MediaEntry, public_url: str) -> MediaEntryOut:
    """The entry as the media library API returns it."""
    return MediaEntryOut(
        id=entry.id,
        version=entry.version,
        media_type=entry.media_type,
        system_name=entry.system_name,
        external_id=entry.external_id,
        asset=AssetOut(
            key=entry.asset_key,
            url=asset_url(public_url, entry),
            mime_type=entry.mime_type,
            size=entry.size,
            filename=download_filename(entry),
            sha256=entry.sha256,
            width=entry.width,
            height=entry.height,
            duration=entry.duration,
        ),
        metadata=entry.metadata_,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
    )
