"""A real PostgreSQL server for tests: one fresh database per test, built by the migrations.

The server is named by ``FILEIMPORT_TEST_POSTGRES_URL`` (a SQLAlchemy URL,
default `DEFAULT_URL`); its user must be allowed to create databases. Each
test gets ``fileimport_test_<random>``, migrated to head with the project's
Alembic migrations and dropped ``WITH (FORCE)`` afterwards, so a test that
leaves connections open (a killed worker process) cannot block the drop.

The test databases run with a session time zone far from UTC, so code that
relies on the server's time zone being UTC fails here rather than in
production.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

URL_ENV = "FILEIMPORT_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT = 3
DATABASE_PREFIX = "fileimport_test_"
# UTC-09:30 all year: far enough from UTC to move timestamps to another day.
TEST_TIME_ZONE = "Pacific/Marquesas"


def in_ci() -> bool:
    """Whether ``CI`` is set to a true value (CI must run every test, not skip it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def configured_url() -> URL:
    """The server URL from ``FILEIMPORT_TEST_POSTGRES_URL`` or the default."""
    return make_url(os.environ.get(URL_ENV) or DEFAULT_URL)


def _libpq_dsn(url: URL) -> str:
    """The same URL for psycopg itself (no ``+driver``)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresUnavailableError(Exception):
    """The configured server cannot be reached or refuses the login."""


@dataclass(frozen=True)
class PostgresServer:
    """A reachable PostgreSQL server and the URL of its maintenance database."""

    url: URL

    @classmethod
    def connect(cls, url: URL | None = None) -> PostgresServer:
        """Check that the server answers; raises `PostgresUnavailableError` saying why not."""
        url = url or configured_url()
        try:
            with psycopg.connect(_libpq_dsn(url), connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PostgresUnavailableError(
                f"PostgreSQL is not reachable at {url.render_as_string(hide_password=True)} "
                f"(set {URL_ENV} to another server): {detail}"
            ) from exc
        return cls(url)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL (``postgresql+psycopg://``) of ``database`` on this server."""
        return self.url.set(database=database).render_as_string(hide_password=False)

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(_libpq_dsn(self.url), connect_timeout=CONNECT_TIMEOUT, autocommit=True)

    def create_database(self) -> str:
        """Create an empty database with a random name (non-UTC time zone); returns its name."""
        name = DATABASE_PREFIX + secrets.token_hex(6)
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(
                    sql.Identifier(name), sql.Literal(TEST_TIME_ZONE)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected (PostgreSQL 13+)."""
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new empty database for the duration of the block; yields its SQLAlchemy URL."""
        name = self.create_database()
        try:
            yield self.url_for(name)
        finally:
            self.drop_database(name)


def require_postgres() -> PostgresServer:
    """The configured server, or skip the calling test saying why; with ``CI=true``, fail it instead.

    CI must never pass because the PostgreSQL tests quietly skipped.
    """
    try:
        return PostgresServer.connect()
    except PostgresUnavailableError as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI=true: PostgreSQL tests must run, not skip)", pytrace=False)
        pytest.skip(f"{exc}; PostgreSQL tests skipped (CI=true would make this an error)")
