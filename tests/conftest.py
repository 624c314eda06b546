"""Fixtures shared by every test layer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresServer, require_postgres
from tests.support.service import migrate

pytest_plugins = ["tests.support.s3"]

CORPUS_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus").resolve()

DATABASE_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
"""Parameters for tests that run on both databases (``request.param`` is the backend)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """``../shared/corpus``; tests that need it skip when it is absent."""
    if not (CORPUS_DIR / "MANIFEST.json").is_file():
        pytest.skip(f"sample corpus not found at {CORPUS_DIR}")
    return CORPUS_DIR


@pytest.fixture(scope="session")
def corpus_manifest(corpus_dir: Path) -> dict[str, dict[str, Any]]:
    """MANIFEST.json entries keyed by their path relative to the corpus."""
    data = json.loads((corpus_dir / "MANIFEST.json").read_text())
    return {entry["path"]: entry for entry in data["files"]}


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The PostgreSQL server of ``FILEIMPORT_TEST_POSTGRES_URL``.

    Skips the requesting tests, saying why, when the server cannot be reached;
    with ``CI=true`` they fail instead, so CI never passes without PostgreSQL.
    """
    return require_postgres()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database for this test, migrated to head; dropped afterwards."""
    with postgres_server.fresh_database() as url:
        migrate(url)
        yield url


@pytest.fixture(params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend (SQLite file, PostgreSQL), migrated to head."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    path = tmp_path / "sqlite" / "fileimport.sqlite3"
    path.parent.mkdir()
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url)
    return url
