"""All SQL for import jobs, their files and idempotency keys."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fileimport.imports.models import IdempotencyKey, ImportFile, ImportJob
from fileimport.imports.states import FileStatus, JobState
from fileimport.projects.models import Project

CLAIM_JOB_CANDIDATES = 8
"""Started jobs looked at per claim, least recently served first; a job whose
pending files are all leased by live workers is passed over for the next."""

IN_CHUNK = 500
"""Ids per ``IN (...)`` list: well under SQLite's and PostgreSQL's parameter limits."""

_files = cast(Table, ImportFile.__table__)  # a declarative class maps a Table
_jobs = cast(Table, ImportJob.__table__)
_projects = cast(Table, Project.__table__)


FILE_COLUMNS = (
    "job_id",
    "position",
    "external_id",
    "url",
    "file_name",
    "metadata",
    "media_type",
    "status",
    "attempts",
)
"""The columns of a new file row given to `insert_files` (the others have their defaults)."""


async def insert_files(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert a job's files, each a dict of `FILE_COLUMNS`.

    On PostgreSQL with ``COPY ... FROM STDIN`` in the session's transaction:
    an executemany of 1000 rows took ~60 ms of a 1000-file POST's ~97 ms
    there. Elsewhere one executemany of a Core insert (not the ORM's bulk
    insert, whose per-row bookkeeping cost a 1000-file POST another 7-9 ms).
    """
    if not rows:
        return
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        raw = await connection.get_raw_connection()
        await _copy_files(raw.driver_connection, rows)
    else:
        await session.execute(_INSERT_FILES, list(rows))


async def _copy_files(connection: Any, rows: Sequence[dict[str, Any]]) -> None:
    """``COPY import_files (FILE_COLUMNS) FROM STDIN`` on a psycopg ``AsyncConnection``; its
    adapters turn each value into PostgreSQL's text form (no SQL is composed from the values)."""
    import psycopg  # here: importing psycopg costs SQLite's service 9 MB
    from psycopg.types.json import Json

    statement = f"COPY {_files.name} ({', '.join(FILE_COLUMNS)}) FROM STDIN"
    try:
        async with connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                # The status enum as its value, not its name; the metadata dict as JSON.
                adapted = {**row, "metadata": Json(row["metadata"]), "status": str(row["status"])}
                await copy.write_row([adapted[column] for column in FILE_COLUMNS])
    except psycopg.OperationalError as exc:
        # As SQLAlchemy would have raised it: the API answers a lost database with a 503.
        raise OperationalError(statement, None, exc) from exc


_INSERT_FILES = insert(_files)


def get_job(session: Session, job_id: str, project_id: int | None = None) -> ImportJob | None:
    """The job ``job_id`` (of project ``project_id`` when given), or None. Sync: `Database.run_read`."""
    query = select(ImportJob).where(ImportJob.id == job_id)
    if project_id is not None:
        query = query.where(ImportJob.project_id == project_id)
    return session.execute(query).scalar_one_or_none()


def _count_by_status(job_id: str) -> Select[FileStatus, int]:
    return select(_files.c.status, func.count()).where(_files.c.job_id == job_id).group_by(_files.c.status)


def count_files_by_status(session: Session, job_id: str) -> dict[FileStatus, int]:
    """How many of the job's files have each status (statuses with none are absent)."""
    return {FileStatus(status): count for status, count in session.execute(_count_by_status(job_id))}


FileResultRow = Row[str, FileStatus, str | None, str | None, str | None]
"""``external_id``, ``status``, ``media_id``, ``code``, ``reason`` of one file (attribute access)."""


def list_file_results(session: Session, job_id: str) -> Sequence[FileResultRow]:
    """A job's files in batch order, their result columns only, as plain rows: no metadata
    JSON to decode and no ORM objects to build, 1000 times for the status of a 1000-file
    job (about 27 of its 34 ms went to loading ORM objects)."""
    return session.execute(_file_results(job_id)).all()


def _file_results(job_id: str) -> Select[str, FileStatus, str | None, str | None, str | None]:
    return (
        select(_files.c.external_id, _files.c.status, _files.c.media_id, _files.c.code, _files.c.reason)
        .where(_files.c.job_id == job_id)
        .order_by(_files.c.position)
    )


@dataclass(frozen=True)
class LeasedFile:
    """A pending file as a claim leased it: what its import needs, and the lease."""

    id: int
    position: int
    external_id: str
    url: str
    file_name: str
    metadata_: dict[str, Any]
    media_type: str | None
    lease_owner: str
    leases: int


@dataclass(frozen=True)
class ClaimedFiles:
    """Files of one job leased by one claim, in batch order.

    ``files`` are to be imported; ``exhausted`` had been leased more than
    ``max_leases`` times without finishing, the last time alone, and were
    given ``failed`` in the claiming transaction. ``alone``: ``files`` is one
    file interrupted ``max_leases`` times, to be imported with nothing else
    in its worker. ``suspects``: the job has such files, which a claim of
    this busy worker left; it should finish what it holds and claim again.
    ``more``: the claim may have left free files (of this job or of a later
    one); False when it took every free file it could see, so that a worker
    need not claim again until a new job arrives or its poll comes round.
    """

    job_id: str
    files: list[LeasedFile]
    exhausted: int
    alone: bool = False
    suspects: bool = False
    more: bool = True


# A claim's statements, built once: Core on the tables (no ORM objects to
# load or identity map to keep) with bound parameters, so that a claim does not
# build its WHERE clauses anew each time. Together with the plain rows this
# took a claim of 16 files from 3.7-5.5 to ~1.5 ms of CPU here.
_CLAIM_CANDIDATE_JOBS = (
    select(_jobs.c.id)
    .where(_jobs.c.state == JobState.STARTED)
    .order_by(_jobs.c.claimed_at.is_not(None), _jobs.c.claimed_at, _jobs.c.started_at)
    .limit(CLAIM_JOB_CANDIDATES)
)
_FREE_FILE = and_(
    _files.c.status == FileStatus.PENDING,
    or_(_files.c.lease_expires_at.is_(None), _files.c.lease_expires_at < bindparam("now")),
)
"""A file a claim may take: pending, with no lease or one that expired before ``now``."""
_CLAIM_JOBS_WITH_FREE_FILES = (
    select(_jobs.c.id)
    .where(
        _jobs.c.state == JobState.STARTED,
        exists().where(_files.c.job_id == _jobs.c.id, _FREE_FILE),
        _jobs.c.id.not_in(bindparam("tried", expanding=True)),
    )
    .order_by(_jobs.c.claimed_at.is_not(None), _jobs.c.claimed_at, _jobs.c.started_at)
    .limit(CLAIM_JOB_CANDIDATES)
)
"""The started jobs that have a free file, for when every job of `_CLAIM_CANDIDATE_JOBS` had none."""
_CLAIM_FREE_FILES = (
    select(_files.c.id, _files.c.leases)
    .where(_files.c.job_id == bindparam("job_id"), _FREE_FILE)
    .order_by(_files.c.position)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_CLAIM_MARK_JOB = update(_jobs).where(_jobs.c.id == bindparam("job_id")).values(claimed_at=bindparam("now"))
_CLAIM_EXHAUSTED = (
    update(_files)
    .where(_files.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=FileStatus.FAILED,
        code="interrupted",
        reason=bindparam("reason"),
        finished_at=bindparam("now"),
        lease_owner=None,
        lease_expires_at=None,
    )
)
_CLAIM_LEASE = (
    update(_files)
    .where(_files.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        lease_owner=bindparam("owner"), lease_expires_at=bindparam("lease_until"), leases=_files.c.leases + 1
    )
    .returning(
        _files.c.id,
        _files.c.position,
        _files.c.external_id,
        _files.c.url,
        _files.c.file_name,
        _files.c.metadata,
        _files.c.media_type,
        _files.c.lease_owner,
        _files.c.leases,
    )
)


_JOB_OF_CLAIM = (
    select(_jobs.c.project_id, _jobs.c.system_name, _jobs.c.started_at, _projects.c.config)
    .join_from(_jobs, _projects, _jobs.c.project_id == _projects.c.id)
    .where(_jobs.c.id == bindparam("job_id"))
)


def job_of_claim(session: Session, job_id: str) -> tuple[int, str, datetime, dict[str, Any]]:
    """The job's project id, system name, ``startedAt`` and its project's raw media type
    config (sync).

    Raises ``sqlalchemy.exc.NoResultFound`` for an unknown job.
    """
    project_id, system_name, started_at, config = session.execute(_JOB_OF_CLAIM, {"job_id": job_id}).one()
    return project_id, system_name, started_at, config


@dataclass(frozen=True)
class ClaimTerms:
    """What a worker asks of one claim (`claim_files`): ``owner`` leases up to ``limit`` files,
    free at ``now``, until ``lease_until``; ``fill`` is its download slots, ``max_leases``
    the leases after which a file is a suspect, ``alone_ok`` whether it holds nothing (and
    may take a suspect), ``prefer_job`` the job whose suspects it saw last."""

    owner: str
    now: datetime
    lease_until: datetime
    limit: int
    fill: int
    max_leases: int
    alone_ok: bool = False
    prefer_job: str | None = None


def claim_files(session: Session, terms: ClaimTerms, *, interrupted_reason: str) -> ClaimedFiles | None:
    """Lease up to ``terms.limit`` pending files of one started job; None when no file is free.

    The job is the one whose files were leased least recently (round robin,
    so every running job progresses) among those with a free file: the
    `CLAIM_JOB_CANDIDATES` leased least recently are looked at first, and
    only if none of them has one, the jobs that do (a cost only then). Within
    the job, files go in batch order. A
    file is free when it has no lease or its lease expired before ``now``.
    When fewer than ``limit`` files are free, the claim takes half of them,
    but at least ``fill`` (the claiming worker's download slots), and leaves
    the rest to other workers: a small job is shared instead of going whole
    to the first worker that looks.

    Each claim counts one lease per file. A worker that dies (killed, out of
    memory, a crash in a decoder) interrupts every file it held, not only the
    one that killed it, so a file interrupted ``max_leases`` times is a
    suspect, not a culprit: it is leased again only alone, to a worker that
    holds nothing else (``alone_ok``; a busy worker learns of them from
    ``ClaimedFiles.suspects``, and names their job as ``prefer_job`` once it
    is idle, so that new jobs do not keep them waiting). One interrupted even then fails with
    code ``interrupted`` and ``interrupted_reason`` instead of being leased
    again; its neighbours, tried alone in turn, import. ``SKIP LOCKED``
    keeps PostgreSQL workers from waiting on each other; SQLite serialises
    writers (BEGIN IMMEDIATE). Sync: runs in `Database.run_in_transaction`.
    """
    candidates = list(session.execute(_CLAIM_CANDIDATE_JOBS).scalars())
    if terms.prefer_job is not None:
        candidates = [terms.prefer_job, *(j for j in candidates if j != terms.prefer_job)]
    claimed = _claim_from(session, candidates, terms, interrupted_reason)
    if claimed is None and len(candidates) >= CLAIM_JOB_CANDIDATES:
        # The jobs claimed least recently had nothing free (their files
        # all leased: long downloads at their tails); a job claimed since
        # may have some. Asked only now: the query costs more.
        # Those tried are left out before the LIMIT: on PostgreSQL their files
        # may look free here while another claim holds them (SKIP LOCKED above).
        with_free = session.execute(
            _CLAIM_JOBS_WITH_FREE_FILES, {"now": terms.now, "tried": candidates}
        ).scalars()
        claimed = _claim_from(session, list(with_free), terms, interrupted_reason)
    return claimed


def _claim_from(
    session: Session, candidates: Sequence[str], terms: ClaimTerms, interrupted_reason: str
) -> ClaimedFiles | None:
    """`claim_files` among ``candidates``, in order: the first that has free files."""
    now, limit, max_leases = terms.now, terms.limit, terms.max_leases
    for index, job_id in enumerate(candidates):
        rows = session.execute(_CLAIM_FREE_FILES, {"job_id": job_id, "now": now, "limit": limit}).all()
        if not rows:
            continue
        exhausted = [file_id for file_id, leases in rows if leases > max_leases]
        suspects = [file_id for file_id, leases in rows if leases == max_leases]
        leased = [file_id for file_id, leases in rows if leases < max_leases]
        alone = terms.alone_ok and bool(suspects)
        if alone:
            leased = suspects[:1]
        elif len(rows) < limit:
            leased = leased[: max(terms.fill, math.ceil(len(leased) / 2))]
        if not exhausted and not leased:  # only suspects, and this worker is busy
            return ClaimedFiles(job_id, [], 0, suspects=True)
        session.execute(_CLAIM_MARK_JOB, {"job_id": job_id, "now": now})
        if exhausted:
            session.execute(_CLAIM_EXHAUSTED, {"ids": exhausted, "reason": interrupted_reason, "now": now})
        files: list[LeasedFile] = []
        if leased:
            returned = session.execute(
                _CLAIM_LEASE, {"ids": leased, "owner": terms.owner, "lease_until": terms.lease_until}
            )
            files = sorted((LeasedFile(*row) for row in returned), key=lambda f: f.position)
        more = (
            len(rows) == limit
            or len(exhausted) + len(leased) < len(rows)
            or index < len(candidates) - 1
            or len(candidates) >= CLAIM_JOB_CANDIDATES
        )
        return ClaimedFiles(
            job_id, files, len(exhausted), alone, suspects=bool(suspects) and not alone, more=more
        )
    return None


_ANY_CLAIMABLE_FILE = (
    select(_files.c.id)
    .join(_jobs, _jobs.c.id == _files.c.job_id)
    .where(_jobs.c.state == JobState.STARTED, _FREE_FILE)
    .limit(1)
)


def any_claimable_files(session: Session, now: datetime) -> bool:
    """Whether some started job has a pending file with no live lease (a cheap read before
    claiming). Sync: `Database.run_read`."""
    return session.execute(_ANY_CLAIMABLE_FILE, {"now": now}).first() is not None


async def renew_file_leases(
    session: AsyncSession, owner: str, file_ids: Sequence[int], lease_until: datetime
) -> None:
    """Extend this owner's leases on ``file_ids`` (those still pending) to ``lease_until``."""
    await _update_own_pending(session, owner, file_ids, {"lease_expires_at": lease_until})


async def release_file_leases(session: AsyncSession, owner: str, file_ids: Sequence[int]) -> None:
    """Hand back this owner's leases on ``file_ids`` that are still pending, so any worker can
    take them at once; a lease handed back (a clean shutdown) does not count against ``max_leases``."""
    values = {"lease_owner": None, "lease_expires_at": None, "leases": ImportFile.leases - 1}
    await _update_own_pending(session, owner, file_ids, values)


async def _update_own_pending(
    session: AsyncSession, owner: str, file_ids: Sequence[int], values: dict[str, Any]
) -> None:
    """Set ``values`` on those of ``file_ids`` still pending under ``owner``'s lease, ``IN_CHUNK`` ids a statement."""
    for start in range(0, len(file_ids), IN_CHUNK):
        await session.execute(
            update(ImportFile)
            .where(
                ImportFile.id.in_(file_ids[start : start + IN_CHUNK]),
                ImportFile.lease_owner == owner,
                ImportFile.status == FileStatus.PENDING,
            )
            .values(values)
        )


async def count_files_in_unfinished_jobs(session: AsyncSession, project_id: int) -> int:
    """Files of the project's started jobs, finished ones included: one SUM over the jobs
    (index on state), not a count of pending files, which grows with the backlog."""
    total = await session.scalar(
        select(func.coalesce(func.sum(ImportJob.total_files), 0)).where(
            ImportJob.state == JobState.STARTED, ImportJob.project_id == project_id
        )
    )
    return int(total or 0)


def has_pending_files(session: Session, job_id: str) -> bool:
    """Whether any file of ``job_id`` still has no result (one index probe, whatever the job's
    size; sync, in `Database.run_in_transaction`)."""
    return session.execute(_HAS_PENDING, {"job_id": job_id}).first() is not None


_HAS_PENDING = (
    select(_files.c.id)
    .where(_files.c.job_id == bindparam("job_id"), _files.c.status == FileStatus.PENDING)
    .limit(1)
)

_LOCK_STARTED_JOB = (
    select(_jobs.c.id)
    .where(_jobs.c.id == bindparam("job_id"), _jobs.c.state == JobState.STARTED)
    .with_for_update()
)


def lock_started_job(session: Session, job_id: str) -> bool:
    """Lock the job's row until the transaction ends (``FOR UPDATE``; SQLite's write lock is
    already the whole database's); False when the job is gone or not ``started`` (sync)."""
    return session.execute(_LOCK_STARTED_JOB, {"job_id": job_id}).first() is not None


def started_jobs_without_pending_files(session: Session) -> list[str]:
    """Ids of ``started`` jobs none of whose files is pending (sync)."""
    pending = select(_files.c.id).where(_files.c.job_id == _jobs.c.id, _files.c.status == FileStatus.PENDING)
    query = select(_jobs.c.id).where(_jobs.c.state == JobState.STARTED, ~pending.exists())
    return list(session.execute(query).scalars())


async def get_idempotency_key(session: AsyncSession, project_id: int, key: str) -> IdempotencyKey | None:
    return (
        await session.execute(
            select(IdempotencyKey).where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == key)
        )
    ).scalar_one_or_none()


async def delete_idempotency_key(session: AsyncSession, key_id: int) -> None:
    await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == key_id))


def lock_pending_files(session: Session, file_ids: Sequence[int]) -> set[int]:
    """Which of ``file_ids`` still have no result, locked until the transaction ends (sync)."""
    rows = session.execute(
        select(ImportFile.id)
        .where(ImportFile.id.in_(file_ids), ImportFile.status == FileStatus.PENDING)
        .with_for_update()
    )
    return set(rows.scalars())


_RECORD_RESULT = (
    update(_files)
    .where(_files.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        media_id=bindparam("b_media_id"),
        code=bindparam("b_code"),
        reason=bindparam("b_reason"),
        attempts=bindparam("b_attempts"),
        finished_at=bindparam("b_finished_at"),
        lease_owner=None,
        lease_expires_at=None,
    )
)


def record_file_results(session: Session, results: Sequence[dict[str, Any]]) -> None:
    """Write final results in one executemany; each dict has ``id``, ``status``, ``media_id``,
    ``code``, ``reason``, ``attempts``, ``finished_at``. The caller locked the rows as pending (sync)."""
    if results:
        session.execute(_RECORD_RESULT, [{f"b_{k}": v for k, v in r.items()} for r in results])
