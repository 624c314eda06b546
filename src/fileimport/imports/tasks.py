"""Background work of the import feature: importing leased files and finishing their job."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from fileimport.core.db import utcnow
from fileimport.core.dispatch import Topic
from fileimport.core.metrics import JOBS_FINISHED
from fileimport.core.runtime import Runtime
from fileimport.imports import repository
from fileimport.imports.models import ImportJob
from fileimport.imports.pipeline import FileImporter, JobContext
from fileimport.imports.states import FileStatus, JobState
from fileimport.media.repository import KnownEntry, list_known_entries
from fileimport.projects.config import ProjectConfig
from fileimport.webhooks.service import schedule_delivery

log = structlog.get_logger(__name__)

INTERRUPTED_REASON = (
    "The import of this file was started {leases} times and never finished: each time its "
    "worker stopped (killed, crashed or lost the database) before recording a result; see the "
    "service log."
)


@dataclass(frozen=True)
class ClaimedWork:
    """Files leased by one claim and what they share, read in the claiming transaction.

    ``existing`` holds the entries already in the library under the files'
    external ids (for conditional requests); the import re-reads them under
    lock before changing anything.
    """

    claim: repository.ClaimedFiles
    ctx: JobContext
    existing: dict[str, KnownEntry]


def claim_work(
    session: Session, *, owner: str, now: datetime, lease_until: datetime, limit: int, max_leases: int
) -> ClaimedWork | None:
    """`repository.claim_files`, plus the job's context and existing entries in the same
    transaction; None when no file is free. Sync: runs in `Database.run_in_transaction`.

    One hop to a thread per claim: reading the job, its project and the
    entries afterwards on the event loop took three more round trips.
    """
    claim = repository.claim_files(
        session,
        owner,
        now,
        lease_until,
        limit,
        max_leases=max_leases,
        interrupted_reason=INTERRUPTED_REASON.format(leases=max_leases),
    )
    if claim is None:
        return None
    project_id, system_name, config = repository.job_of_claim(session, claim.job_id)
    ctx = JobContext(claim.job_id, project_id, system_name, ProjectConfig.model_validate(config))
    keys = [f.external_id for f in claim.files]
    existing = list_known_entries(session, project_id, system_name, keys)
    return ClaimedWork(claim, ctx, existing)


async def import_claimed_files(runtime: Runtime, importer: FileImporter, work: ClaimedWork) -> None:
    """Import the files of one claim (all of one job), then finish the job if none is pending.

    The caller holds the files' leases. Files are imported concurrently, at
    most as many downloads at once as the importer's ``download_slots``
    allow across every claim of this worker. A file given a result
    meanwhile by another worker (after its lease expired here) is left as it is.
    """
    async with asyncio.TaskGroup() as tg:  # asyncio's: a task costs less than with anyio's
        for file in work.claim.files:
            tg.create_task(importer.import_file(work.ctx, file, work.existing.get(file.external_id)))
    await finish_job_if_done(runtime, work.claim.job_id)


async def finish_job_if_done(runtime: Runtime, job_id: str) -> bool:
    """Mark the job ``success`` once no file is pending and schedule its webhook; True if it finished now."""
    # A read first: most claims end with files of their job still pending
    # elsewhere, and on SQLite a write transaction would queue for the lock.
    async with runtime.db.reader() as session:
        if await repository.has_pending_files(session, job_id):
            return False
    # One hop to a thread for the whole transaction: with aiosqlite its six
    # statements were six trips through the event loop, and the job's end
    # (and its webhook) waited ~20 ms for them in bench case (b).
    counts = await runtime.db.run_in_transaction(partial(_finish_job, job_id=job_id))
    if counts is None:
        return False
    JOBS_FINISHED.labels(state=JobState.SUCCESS).inc()
    log.info(
        "import.job.finished",
        job_id=job_id,
        state=JobState.SUCCESS,
        counts={str(k): v for k, v in counts.items()},
    )
    runtime.dispatcher.wake(Topic.WEBHOOKS)
    return True


def _finish_job(session: Session, *, job_id: str) -> dict[FileStatus, int] | None:
    """Sync part of `finish_job_if_done`, under the job's lock: its file counts, None when it
    was not finished now (gone, finished already, or with files pending)."""
    job = session.execute(
        select(ImportJob).where(ImportJob.id == job_id).with_for_update()
    ).scalar_one_or_none()
    if job is None or job.state != JobState.STARTED:
        return None
    if repository.has_pending_files_sync(session, job_id):
        return None
    counts = repository.count_files_by_status_sync(session, job_id)
    job.state = JobState.SUCCESS
    job.finished_at = utcnow()
    schedule_delivery(session, job, repository.list_file_results_sync(session, job_id))
    return counts
