"""Background work of the import feature: running a leased job to its end."""

from __future__ import annotations

import anyio
import structlog
from sqlalchemy import select

from fileimport.core.db import utcnow
from fileimport.core.dispatch import Topic
from fileimport.core.metrics import JOBS_FINISHED
from fileimport.core.runtime import Runtime
from fileimport.imports import repository
from fileimport.imports.models import ImportFile, ImportJob
from fileimport.imports.pipeline import FileImporter, JobContext
from fileimport.imports.states import FileStatus, JobState
from fileimport.media.models import MediaEntry
from fileimport.media.repository import list_entries_by_keys
from fileimport.projects.models import Project
from fileimport.projects.service import project_config
from fileimport.webhooks.service import schedule_delivery

log = structlog.get_logger(__name__)

PRELOAD_CHUNK = 500


async def run_import_job(
    runtime: Runtime, importer: FileImporter, job_id: str, limiter: anyio.Semaphore
) -> None:
    """Import every pending file of ``job_id``, then finish the job.

    The caller holds the job's lease. Files are imported concurrently, at most
    as many at once as ``limiter`` allows across every job of this worker. A
    file that already has a result (from a run before a crash) is not touched.
    A job leased more than ``job_max_attempts`` times ends ``failed``.
    """
    async with runtime.db.transaction() as session:
        job = await repository.get_job(session, job_id)
        if job is None or job.state != JobState.STARTED:
            return
        attempts = job.attempts
        project = await session.get(Project, job.project_id)
        assert project is not None  # noqa: S101 - foreign key
        ctx = JobContext(job.id, job.project_id, job.system_name, project_config(project))
        pending = list(await repository.list_pending_files(session, job_id, limit=job.total_files))
        existing: dict[str, MediaEntry] = {}
        for start in range(0, len(pending), PRELOAD_CHUNK):
            chunk = [f.external_id for f in pending[start : start + PRELOAD_CHUNK]]
            existing.update(await list_entries_by_keys(session, job.project_id, job.system_name, chunk))
    if attempts > runtime.settings.job_max_attempts:
        await fail_job(
            runtime,
            job_id,
            "job_interrupted",
            f"The job was interrupted {attempts - 1} times by faults not tied to one file "
            "(see the service log); its unfinished files were not imported.",
        )
        return
    log.info("import.job.running", job_id=job_id, pending=len(pending), attempt=attempts)

    async def import_one(file: ImportFile) -> None:
        try:
            await importer.import_file(ctx, file, existing.get(file.external_id))
        finally:
            limiter.release()

    async with anyio.create_task_group() as tg:
        for file in pending:
            await limiter.acquire()
            tg.start_soon(import_one, file)

    await finish_job_if_done(runtime, job_id)


async def finish_job_if_done(runtime: Runtime, job_id: str) -> bool:
    """Mark the job ``success`` once no file is pending and schedule its webhook; True if it finished now."""
    async with runtime.db.transaction() as session:
        job = (
            await session.execute(select(ImportJob).where(ImportJob.id == job_id).with_for_update())
        ).scalar_one_or_none()
        if job is None or job.state != JobState.STARTED:
            return False
        counts = await repository.count_files_by_status(session, job_id)
        if counts.get(FileStatus.PENDING, 0):
            return False
        job.state = JobState.SUCCESS
        job.finished_at = utcnow()
        job.lease_owner = None
        job.lease_expires_at = None
        files = list(await repository.list_files(session, job_id))
        delivery = schedule_delivery(session, job, files)
    JOBS_FINISHED.labels(state=JobState.SUCCESS).inc()
    log.info(
        "import.job.finished",
        job_id=job_id,
        state=JobState.SUCCESS,
        counts={str(k): v for k, v in counts.items()},
    )
    if delivery is not None:
        runtime.dispatcher.wake(Topic.WEBHOOKS)
    return True


async def fail_job(runtime: Runtime, job_id: str, code: str, reason: str) -> None:
    """End the job as ``failed``: its unfinished files fail with ``reason``; the webhook is scheduled."""
    async with runtime.db.transaction() as session:
        job = (
            await session.execute(select(ImportJob).where(ImportJob.id == job_id).with_for_update())
        ).scalar_one_or_none()
        if job is None or job.state != JobState.STARTED:
            return
        now = utcnow()
        await repository.fail_pending_files(session, job_id, code, reason, now)
        job.state = JobState.FAILED
        job.failure_reason = reason
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
        files = list(await repository.list_files(session, job_id))
        delivery = schedule_delivery(session, job, files)
    JOBS_FINISHED.labels(state=JobState.FAILED).inc()
    log.warning("import.job.failed", job_id=job_id, code=code, reason=reason)
    if delivery is not None:
        runtime.dispatcher.wake(Topic.WEBHOOKS)
