"""A worker started on a database older than its code waits for ``fileimport migrate``."""

from __future__ import annotations

from pathlib import Path

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session

from fileimport.auth.service import Principal
from fileimport.core.runtime import open_runtime
from fileimport.core.settings import Settings
from fileimport.imports.models import ImportFile
from fileimport.imports.schemas import ImportRequest
from fileimport.imports.service import create_job
from fileimport.projects.service import create_project
from fileimport.worker import Worker
from tests.support.service import migrate_async, revision_before_head, run_alembic


async def test_a_worker_on_an_old_schema_takes_no_file_until_migrated(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_poll_seconds=0.05)
    url = settings.resolved_database_url
    await migrate_async(url)
    previous = revision_before_head()
    await anyio.to_thread.run_sync(run_alembic, url, "downgrade", previous)
    runtime = open_runtime(settings)
    try:
        async with runtime.db.transaction() as session:
            project = await create_project(session, "p")
            request = ImportRequest.model_validate(
                {
                    "systemName": "s",
                    "files": [{"url": "http://127.0.0.1:9/a.png", "id": "a", "fileName": "a"}],
                }
            )
            await create_job(session, Principal(project.id, "p", frozenset()), request)

        def leases(session: Session) -> list[int]:
            return list(session.scalars(select(ImportFile.leases)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(Worker(runtime).run)
            await anyio.sleep(1.5)
            assert await runtime.db.run_read(leases) == [0]  # not claimed: the worker waits
            await anyio.to_thread.run_sync(run_alembic, url, "upgrade", "head")
            with anyio.fail_after(20):
                while await runtime.db.run_read(leases) == [0]:  # claimed once migrated
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    finally:
        await runtime.close()
