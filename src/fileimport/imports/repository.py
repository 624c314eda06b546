"""All SQL for import jobs, their files and idempotency keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fileimport.imports.models import IdempotencyKey, ImportFile, ImportJob
from fileimport.imports.states import FileStatus, JobState


async def insert_files(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert a job's files in one statement (executemany)."""
    if rows:
        await session.execute(insert(ImportFile), list(rows))


async def get_job(session: AsyncSession, job_id: str, project_id: int | None = None) -> ImportJob | None:
    query = select(ImportJob).where(ImportJob.id == job_id)
    if project_id is not None:
        query = query.where(ImportJob.project_id == project_id)
    return (await session.execute(query)).scalar_one_or_none()


async def count_files_by_status(session: AsyncSession, job_id: str) -> dict[FileStatus, int]:
    rows = await session.execute(
        select(ImportFile.status, func.count()).where(ImportFile.job_id == job_id).group_by(ImportFile.status)
    )
    return {FileStatus(status): count for status, count in rows}


async def list_files(session: AsyncSession, job_id: str) -> Sequence[ImportFile]:
    rows = await session.execute(
        select(ImportFile).where(ImportFile.job_id == job_id).order_by(ImportFile.position)
    )
    return rows.scalars().all()


async def list_pending_files(session: AsyncSession, job_id: str, limit: int) -> Sequence[ImportFile]:
    rows = await session.execute(
        select(ImportFile)
        .where(ImportFile.job_id == job_id, ImportFile.status == FileStatus.PENDING)
        .order_by(ImportFile.position)
        .limit(limit)
    )
    return rows.scalars().all()


async def fail_pending_files(
    session: AsyncSession, job_id: str, code: str, reason: str, now: datetime
) -> None:
    await session.execute(
        update(ImportFile)
        .where(ImportFile.job_id == job_id, ImportFile.status == FileStatus.PENDING)
        .values(status=FileStatus.FAILED, code=code, reason=reason, finished_at=now)
    )


async def claim_jobs(
    session: AsyncSession, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[str]:
    """Lease up to ``limit`` started jobs whose lease is free or expired; returns their ids.

    Each claim counts as one attempt of the job. ``SKIP LOCKED`` keeps
    PostgreSQL workers from waiting on each other; SQLite serialises writers.
    """
    candidates = (
        (
            await session.execute(
                select(ImportJob.id)
                .where(
                    ImportJob.state == JobState.STARTED,
                    or_(ImportJob.lease_expires_at.is_(None), ImportJob.lease_expires_at < now),
                )
                .order_by(ImportJob.started_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    if candidates:
        await session.execute(
            update(ImportJob)
            .where(ImportJob.id.in_(candidates))
            .values(lease_owner=owner, lease_expires_at=lease_until, attempts=ImportJob.attempts + 1)
        )
    return list(candidates)


async def renew_leases(
    session: AsyncSession, owner: str, job_ids: Sequence[str], lease_until: datetime
) -> None:
    if job_ids:
        await session.execute(
            update(ImportJob)
            .where(ImportJob.id.in_(job_ids), ImportJob.lease_owner == owner)
            .values(lease_expires_at=lease_until)
        )


async def release_lease(session: AsyncSession, owner: str, job_id: str) -> None:
    await session.execute(
        update(ImportJob)
        .where(ImportJob.id == job_id, ImportJob.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


async def get_idempotency_key(session: AsyncSession, project_id: int, key: str) -> IdempotencyKey | None:
    return (
        await session.execute(
            select(IdempotencyKey).where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == key)
        )
    ).scalar_one_or_none()


async def delete_idempotency_key(session: AsyncSession, key_id: int) -> None:
    await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == key_id))


async def lock_pending_files(session: AsyncSession, file_ids: Sequence[int]) -> set[int]:
    """Which of ``file_ids`` still have no result, locked until the transaction ends."""
    rows = await session.execute(
        select(ImportFile.id)
        .where(ImportFile.id.in_(file_ids), ImportFile.status == FileStatus.PENDING)
        .with_for_update()
    )
    return set(rows.scalars())


_files = ImportFile.__table__
assert isinstance(_files, Table)  # noqa: S101 - a declarative class maps a Table
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
    )
)


async def record_file_results(session: AsyncSession, results: Sequence[dict[str, Any]]) -> None:
    """Write final results in one executemany; each dict has ``id``, ``status``, ``media_id``,
    ``code``, ``reason``, ``attempts``, ``finished_at``. The caller locked the rows as pending."""
    if results:
        await session.execute(_RECORD_RESULT, [{f"b_{k}": v for k, v in r.items()} for r in results])
