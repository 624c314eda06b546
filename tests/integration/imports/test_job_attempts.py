"""A job that keeps losing its worker ends ``failed`` instead of being retried for ever."""

from __future__ import annotations

from pathlib import Path

import anyio
from sqlalchemy import update

from fileimport.auth.service import Principal
from fileimport.core.fetcher import OriginFetcher
from fileimport.core.runtime import open_runtime
from fileimport.core.settings import Settings
from fileimport.imports import repository
from fileimport.imports.models import ImportJob
from fileimport.imports.pipeline import FileImporter
from fileimport.imports.recorder import ResultRecorder
from fileimport.imports.schemas import ImportRequest
from fileimport.imports.service import create_job
from fileimport.imports.states import FileStatus, JobState
from fileimport.imports.tasks import run_import_job
from fileimport.projects.models import Project
from fileimport.webhooks.repository import get_delivery_for_job
from tests.support.service import migrate_async


async def test_job_past_its_attempts_fails_its_pending_files_and_schedules_the_webhook(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, job_max_attempts=2)
    await migrate_async(settings.resolved_database_url)
    runtime = open_runtime(settings)
    try:
        async with runtime.db.transaction() as session:
            project = Project(name="p", config={}, webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            session.add(project)
            await session.flush()
            principal = Principal(project.id, "p", frozenset())
            request = ImportRequest.model_validate(
                {
                    "systemName": "s",
                    "webhook": "http://127.0.0.1:9/hook",
                    "files": [
                        {"url": "http://127.0.0.1:9/a.png", "id": "a", "fileName": "a"},
                        {"url": "http://127.0.0.1:9/b.png", "id": "b", "fileName": "b"},
                    ],
                }
            )
            job_id = await create_job(session, principal, request)
            # Three leases taken, none finished: the third is past job_max_attempts=2.
            await session.execute(update(ImportJob).where(ImportJob.id == job_id).values(attempts=3))

        async with (
            OriginFetcher(settings, spool_dir=tmp_path / "spool") as fetcher,
            ResultRecorder(runtime.db) as recorder,
        ):
            await run_import_job(
                runtime, FileImporter(runtime, fetcher, recorder), job_id, anyio.Semaphore(4)
            )

        async with runtime.db.transaction() as session:
            job = await repository.get_job(session, job_id)
            files = await repository.list_files(session, job_id)
            delivery = await get_delivery_for_job(session, job_id)
        assert job is not None
        assert job.state is JobState.FAILED
        assert "interrupted 2 times" in (job.failure_reason or "")
        assert [(f.status, f.code) for f in files] == [(FileStatus.FAILED, "job_interrupted")] * 2
        assert delivery is not None
        assert '"state":"failed"' in delivery.payload
    finally:
        await runtime.close()
