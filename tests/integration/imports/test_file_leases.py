"""A file whose import keeps killing its worker fails as ``interrupted`` instead of being retried for ever."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from fileimport.auth.service import Principal
from fileimport.core.db import utcnow
from fileimport.core.fetcher import OriginFetcher
from fileimport.core.runtime import open_runtime
from fileimport.core.settings import Settings
from fileimport.imports import repository
from fileimport.imports.models import ImportFile
from fileimport.imports.pipeline import FileImporter
from fileimport.imports.recorder import ResultRecorder
from fileimport.imports.schemas import ImportRequest
from fileimport.imports.service import create_job
from fileimport.imports.states import FileStatus, JobState
from fileimport.imports.tasks import claim_work, import_claimed_files
from fileimport.projects.models import Project
from fileimport.webhooks.repository import get_delivery_for_job
from tests.support.service import migrate_async


async def test_files_past_their_leases_fail_and_the_job_finishes_with_its_webhook(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, file_max_leases=2)
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
            # Both files were leased twice (file_max_leases), then once alone, and never finished.
            await session.execute(update(ImportFile).where(ImportFile.job_id == job_id).values(leases=3))

        now = utcnow()
        work = await runtime.db.run_in_transaction(
            lambda session: claim_work(
                session,
                repository.ClaimTerms(
                    owner="w",
                    now=now,
                    lease_until=now + timedelta(seconds=30),
                    limit=10,
                    fill=10,
                    max_leases=settings.file_max_leases,
                ),
            )
        )
        assert work is not None
        assert (work.claim.files, work.claim.exhausted) == ([], 2)

        async with (
            OriginFetcher(settings, spool_dir=tmp_path / "spool") as fetcher,
            ResultRecorder(runtime.db) as recorder,
        ):
            await import_claimed_files(FileImporter(runtime, fetcher, recorder), work)

        job, files, delivery = await runtime.db.run_read(
            lambda session: (
                repository.get_job(session, job_id),
                repository.list_file_results(session, job_id),
                get_delivery_for_job(session, job_id),
            )
        )
        assert job is not None
        assert job.state is JobState.SUCCESS
        assert [(f.status, f.code) for f in files] == [(FileStatus.FAILED, "interrupted")] * 2
        assert all("started 3 times, the last time alone in its worker" in (f.reason or "") for f in files)
        assert delivery is not None
        assert '"code":"interrupted"' in delivery.payload
    finally:
        await runtime.close()
