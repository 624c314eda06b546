"""All SQL for media library entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, func, select, tuple_
from sqlalchemy.orm import Session

from fileimport.media.models import MediaEntry


def get_entry(session: Session, project_id: int, media_id: str) -> MediaEntry | None:
    """The entry ``media_id`` of project ``project_id``, or None. Sync: `Database.run_read`."""
    return session.execute(
        select(MediaEntry).where(MediaEntry.project_id == project_id, MediaEntry.id == media_id)
    ).scalar_one_or_none()


def get_entry_by_id(session: Session, media_id: str) -> MediaEntry | None:
    """The entry with ``media_id`` in any project (asset URLs are capability URLs), or None.
    Sync: `Database.run_read`."""
    return session.get(MediaEntry, media_id)


def get_entry_by_key(
    session: Session, project_id: int, system_name: str, external_id: str
) -> MediaEntry | None:
    """The entry of ``system_name`` and ``external_id`` in project ``project_id``, or None.
    Sync: `Database.run_read`."""
    return session.execute(
        select(MediaEntry).where(
            MediaEntry.project_id == project_id,
            MediaEntry.system_name == system_name,
            MediaEntry.external_id == external_id,
        )
    ).scalar_one_or_none()


def list_entries_by_ids(session: Session, project_id: int, ids: Sequence[str]) -> list[MediaEntry]:
    """The entries of project ``project_id`` among ``ids``, in the order of ``ids`` (unknown ids left
    out). Sync: `Database.run_read`."""
    rows = session.execute(
        select(MediaEntry).where(MediaEntry.project_id == project_id, MediaEntry.id.in_(ids))
    )
    by_id = {entry.id: entry for entry in rows.scalars()}
    return [by_id[i] for i in ids if i in by_id]


@dataclass(frozen=True)
class KnownEntry:
    """What a re-import needs of an entry already in the library: its origin's validators
    (for a conditional request), its blob and its media type."""

    external_id: str
    media_type: str
    asset_key: str
    source_url: str
    origin_etag: str | None
    origin_last_modified: str | None


_entries = cast(Table, MediaEntry.__table__)  # a declarative class maps a Table
_KNOWN_ENTRIES = select(
    _entries.c.external_id,
    _entries.c.media_type,
    _entries.c.asset_key,
    _entries.c.source_url,
    _entries.c.origin_etag,
    _entries.c.origin_last_modified,
).where(
    _entries.c.project_id == bindparam("project_id"),
    _entries.c.system_name == bindparam("system_name"),
    _entries.c.external_id.in_(bindparam("external_ids", expanding=True)),
)


def list_known_entries(
    session: Session, project_id: int, system_name: str, external_ids: Sequence[str]
) -> dict[str, KnownEntry]:
    """Entries of one system by external id, for the ids given (one query, no lock, plain rows).

    Sync: runs inside `Database.run_in_transaction` (or ``AsyncSession.run_sync``).
    """
    if not external_ids:
        return {}
    params = {"project_id": project_id, "system_name": system_name, "external_ids": list(external_ids)}
    return {row.external_id: KnownEntry(*row) for row in session.execute(_KNOWN_ENTRIES, params)}


def count_references(session: Session, asset_keys: Sequence[str]) -> dict[str, int]:
    """How many entries reference each asset key (keys no entry references are absent).
    Sync: `Database.run_read`."""
    rows = session.execute(
        select(MediaEntry.asset_key, func.count())
        .where(MediaEntry.asset_key.in_(asset_keys))
        .group_by(MediaEntry.asset_key)
    )
    return {key: count for key, count in rows}


def lock_entries_by_keys(
    session: Session, project_id: int, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], MediaEntry]:
    """Entries by (system name, external id), locked for update (PostgreSQL; SQLite locks the database).

    Sync: runs inside `Database.run_in_transaction` (or ``AsyncSession.run_sync``).
    """
    if not keys:
        return {}
    rows = session.execute(
        select(MediaEntry)
        .where(
            MediaEntry.project_id == project_id,
            tuple_(MediaEntry.system_name, MediaEntry.external_id).in_(sorted(keys)),
        )
        .with_for_update()
    )
    return {(e.system_name, e.external_id): e for e in rows.scalars()}
