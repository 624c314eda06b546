"""When the database goes away, the API answers 503 with Retry-After, not 500."""

from __future__ import annotations

from pathlib import Path

import httpx2
import psycopg
from sqlalchemy.engine import make_url

from fileimport.app import create_app
from fileimport.core.settings import Settings
from tests.support.postgres import PostgresServer
from tests.support.service import run_service


async def test_database_outage_is_503_and_recovers(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = make_url(postgres_url).database
    admin_dsn = postgres_server.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def allow_connections(allowed: bool) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
                )

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


async def test_readyz_says_when_the_database_was_never_migrated(tmp_path: Path) -> None:

    settings = Settings(data_dir=tmp_path / "never-migrated")
    app = create_app(settings, run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://service") as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error_details"]["database"] == "not migrated: run 'fileimport migrate'"
