"""Fixtures for end-to-end tests: a running service and loopback origins.

The modules in `BOTH_DATABASES` run every test on SQLite and on PostgreSQL
(test ids ``[sqlite]``/``[postgres]``); the others run on SQLite only, as
their behaviour does not depend on the database and the suite stays quick.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import DATABASE_BACKENDS
from tests.support.origin import serve_directory
from tests.support.service import RunningService, run_service

BOTH_DATABASES = frozenset(
    {"test_import_corpus", "test_import_failures", "test_origin_validators", "test_webhook"}
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "database_backend" in metafunc.fixturenames and module in BOTH_DATABASES:
        metafunc.parametrize("database_backend", DATABASE_BACKENDS, indirect=True)


@pytest.fixture
def database_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``; SQLite unless the module is in `BOTH_DATABASES`."""
    backend: str = getattr(request, "param", "sqlite")
    return backend


@pytest.fixture
def service_database_url(request: pytest.FixtureRequest, database_backend: str) -> str | None:
    """The ``database_url`` for `run_service`: None (SQLite under the data folder) or PostgreSQL."""
    if database_backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None


@pytest.fixture
async def service(tmp_path: Path, service_database_url: str | None) -> AsyncIterator[RunningService]:
    async with run_service(tmp_path / "var", database_url=service_database_url) as running:
        yield running


@pytest.fixture(scope="session")
def corpus_origin(corpus_dir: Path) -> Iterator[str]:
    """``../shared/corpus`` served on 127.0.0.1."""
    with serve_directory(corpus_dir) as base_url:
        yield base_url
