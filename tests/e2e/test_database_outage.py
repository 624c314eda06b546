"""When the database goes away, the API answers 503 with Retry-After, not 500, and the
import fails no file for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import httpx2
import psycopg
from pytest_httpserver import HTTPServer
from sqlalchemy.engine import make_url

from fileimport.app import create_app
from fileimport.core.schema import SCHEMA_HEAD
from fileimport.core.settings import Settings
from tests.support.fault_origin import serve_fault_origin
from tests.support.images import png_bytes
from tests.support.postgres import PostgresServer
from tests.support.service import revision_before_head, run_alembic, run_service


def outage_switch(postgres_server: PostgresServer, postgres_url: str) -> Callable[[bool], None]:
    """``allow_connections(False)`` refuses new connections to the test database and ends its
    sessions; ``allow_connections(True)`` lets them in again."""
    database = make_url(postgres_url).database
    admin_dsn = postgres_server.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def allow_connections(allowed: bool) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
                )

    return allow_connections


async def test_database_outage_is_503_and_recovers(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    allow_connections = outage_switch(postgres_server, postgres_url)
    async with run_service(tmp_path / "var", database_url=postgres_url, run_worker=False) as service:
        headers = service.tenant.headers
        assert (await service.client.get("/readyz")).status_code == 200
        allow_connections(False)
        try:
            status = await service.client.get(
                "/api/v1/import/files/status", params={"id": "j1"}, headers=headers
            )
            assert status.status_code == 503, status.text
            assert status.headers["retry-after"]
            assert status.json()["error_details"] == {"database": "unavailable; retry later"}
            ready = await service.client.get("/readyz")
            assert ready.status_code == 503
            assert "database" in ready.json()["error_details"]
        finally:
            allow_connections(True)
        again = await service.client.get("/api/v1/import/files/status", params={"id": "j1"}, headers=headers)
        assert again.status_code == 404


async def test_files_downloaded_while_the_database_is_away_are_imported_once_it_is_back(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Results that cannot be written during an outage are not failed (before: ``failed``,
    ``internal_error``, final): their leases run out and the files are imported again."""
    allow_connections = outage_switch(postgres_server, postgres_url)
    async with (
        serve_fault_origin() as origin,
        run_service(tmp_path / "var", database_url=postgres_url, worker_lease_seconds=2) as service,
    ):
        # Two slow downloads (1 s of bytes each): the database goes away while they run.
        body = {
            "systemName": "outage",
            "files": [
                {"url": origin.url(f"/trickle?size=10&interval=0.1&n={n}"), "id": f"f{n}", "fileName": "f"}
                for n in range(2)
            ],
        }
        posted = await service.post_import(body)
        assert posted.status_code == 200, posted.text
        with anyio.fail_after(10):
            while sum(origin.hits.values()) < 2:
                await anyio.sleep(0.02)
        allow_connections(False)
        try:
            with anyio.fail_after(30):
                while origin.in_flight:  # the downloads end; their results cannot be written
                    await anyio.sleep(0.02)
            await anyio.sleep(0.5)
        finally:
            allow_connections(True)
        status = await service.wait_finished(posted.json()["id"], timeout=90)
    results = {f["externalId"]: (f["status"], f.get("code")) for f in status["files"]}
    assert results == {"f0": ("success", None), "f1": ("success", None)}, status
    assert sum(origin.hits.values()) >= 4  # each downloaded again once its lease ran out


async def test_readyz_says_when_the_database_was_never_migrated(tmp_path: Path) -> None:

    settings = Settings(data_dir=tmp_path / "never-migrated")
    app = create_app(settings, run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://service") as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error_details"]["database"] == "not migrated: run 'fileimport migrate'"


async def test_a_service_newer_than_its_database_schema_waits_for_migrate_and_fails_no_file(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    """Upgraded without ``fileimport migrate``: /readyz says so, files are not failed (their results
    cannot be written: a column is missing), and once migrated the job finishes. Before: /readyz
    said ready, and the file was downloaded again about once a second for ever."""
    httpserver.expect_request("/a.png").respond_with_data(png_bytes(4, 4), content_type="image/png")
    previous = revision_before_head()
    async with run_service(tmp_path / "var") as service:
        url = service.settings.resolved_database_url
        await anyio.to_thread.run_sync(run_alembic, url, "downgrade", previous)
        ready = await service.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error_details"]["database"].startswith(
            f"at migration {previous}, not {SCHEMA_HEAD}"
        )

        body = {
            "systemName": "s",
            "files": [{"url": httpserver.url_for("/a.png"), "id": "a", "fileName": "a"}],
        }
        posted = await service.post_import(body)
        assert posted.status_code == 200, posted.text
        await anyio.sleep(2)  # downloaded, not recorded: no result, failed or other
        assert (await service.status(posted.json()["id"]))["finished"] is False

        await anyio.to_thread.run_sync(run_alembic, url, "upgrade", "head")
        status = await service.wait_finished(posted.json()["id"], timeout=60)
        assert [(f["status"], f.get("code")) for f in status["files"]] == [("success", None)]
        assert (await service.client.get("/readyz")).status_code == 200
