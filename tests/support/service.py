"""A real fileimport service on 127.0.0.1 for integration and end-to-end tests.

The service runs under uvicorn inside the test's event loop (real TCP, real
SQLite or PostgreSQL built by the project's migrations, real local storage),
so tests drive it over HTTP exactly as a client would.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from alembic import command

from fileimport.app import create_app
from fileimport.auth.service import SCOPE_READ, SCOPE_WRITE, create_token
from fileimport.core.db import Database
from fileimport.core.schema import SCHEMA_HEAD, migrations_config
from fileimport.core.settings import Settings
from fileimport.projects.config import ProjectConfig
from fileimport.projects.service import create_project

LOOPBACK = "127.0.0.0/8,::1/128"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_alembic(database_url: str, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade REVISION`` on ``database_url`` (call from a thread: env.py
    starts its own loop)."""
    getattr(command, action)(migrations_config(database_url), revision)


def revision_before_head() -> str:
    """The migration before the newest: a database one ``fileimport migrate`` behind this code."""
    from alembic.script import ScriptDirectory

    previous = ScriptDirectory.from_config(migrations_config()).get_revision(SCHEMA_HEAD).down_revision
    assert isinstance(previous, str)
    return previous


def migrate(database_url: str) -> None:
    """Run the project's Alembic migrations to the newest (call from a thread)."""
    run_alembic(database_url, "upgrade", "head")


async def migrate_async(database_url: str) -> None:
    await anyio.to_thread.run_sync(migrate, database_url)


@dataclass
class Tenant:
    """A project and a token with both scopes."""

    name: str
    token: str
    webhook_secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def create_tenant(
    database_url: str,
    name: str,
    config: ProjectConfig | None = None,
    scopes: tuple[str, ...] = (SCOPE_WRITE, SCOPE_READ),
) -> Tenant:
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            project = await create_project(session, name, config)
            token = await create_token(session, project, list(scopes))
            return Tenant(name, token, project.webhook_secret)
    finally:
        await db.dispose()


@dataclass
class RunningService:
    base_url: str
    settings: Settings
    tenant: Tenant
    client: httpx2.AsyncClient

    async def post_import(
        self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> httpx2.Response:
        return await self.client.post(
            "/api/v1/import/files", json=body, headers={**self.tenant.headers, **(headers or {})}
        )

    async def status(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(
            "/api/v1/import/files/status", params={"id": job_id}, headers=self.tenant.headers
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def wait_finished(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the status until ``finished``; fails the test after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            while True:
                status = await self.status(job_id)
                if status["finished"]:
                    return status
                await anyio.sleep(0.05)

    async def wait_webhook(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the status until the job's webhook delivery is delivered or failed."""
        with anyio.fail_after(timeout):
            while True:
                status = await self.status(job_id)
                if (status.get("webhook") or {}).get("state") in ("delivered", "failed"):
                    return status
                await anyio.sleep(0.05)

    async def import_and_wait(self, body: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        response = await self.post_import(body)
        assert response.status_code == 200, response.text
        return await self.wait_finished(response.json()["id"], timeout)

    async def media_entry(self, media_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/mediaLibrary/{media_id}", headers=self.tenant.headers)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


@asynccontextmanager
async def run_service(
    data_dir: Path,
    *,
    database_url: str | None = None,
    config: ProjectConfig | None = None,
    run_worker: bool = True,
    **overrides: Any,
) -> AsyncIterator[RunningService]:
    """Migrate, create a tenant, serve on a free loopback port; stop on exit.

    Without ``run_worker`` nothing is ever fetched: jobs are stored and stay queued.
    """
    port = free_port()
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        public_url=f"http://127.0.0.1:{port}",
        fetch_allowed_networks=overrides.pop("fetch_allowed_networks", LOOPBACK),
        fetch_backoff_base=overrides.pop("fetch_backoff_base", 0.01),
        worker_poll_seconds=overrides.pop("worker_poll_seconds", 0.2),
        # Tests never reach past loopback, whatever URL a test posts.
        fetch_block_public=overrides.pop("fetch_block_public", True),
        **overrides,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    await migrate_async(settings.resolved_database_url)
    tenant = await create_tenant(settings.resolved_database_url, "test", config)
    app = create_app(settings, run_worker=run_worker)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        with anyio.fail_after(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield RunningService(f"http://127.0.0.1:{port}", settings, tenant, client)
    finally:
        server.should_exit = True
        await task
