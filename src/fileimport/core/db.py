"""Database engine, sessions and the declarative base.

SQLite runs in WAL mode and every transaction starts with ``BEGIN
IMMEDIATE`` so that concurrent writers queue on the busy timeout instead of
failing with "database is locked" when a read transaction upgrades to a write
(SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL"
for pysqlite/aiosqlite). PostgreSQL uses psycopg 3.

Reads, and the import pipeline's hot write transactions (claiming files,
recording results, webhook deliveries), are plain functions of a sync
``Session`` run whole in a worker thread (`Database.run_read`,
`Database.run_in_transaction`): with aiosqlite every statement is four
thread hops through the event loop, and a transaction interleaved with the
loop's other work held SQLite's write lock for many milliseconds, which
stalled the other processes sharing the file (bench case (a)). The other
writes (creating a job, renewing and handing back leases, the CLI's
changes) use an async session (`Database.transaction`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import anyio
from sqlalchemy import DateTime, Dialect, Engine, Enum, MetaData, TypeDecorator, event, make_url
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base whose constraint names are stable across migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id(prefix: str = "", nbytes: int = 12) -> str:
    """A random URL-safe identifier (``nbytes`` of entropy), e.g. ``j_3kq...``."""
    return prefix + secrets.token_urlsafe(nbytes).replace("-", "x").replace("_", "z")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend, loaded with ``tzinfo=UTC``.

    SQLite stores naive text (UTC by construction); PostgreSQL stores
    ``timestamptz`` and returns it in the session's time zone, converted here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use fileimport.core.db.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        # PostgreSQL answers in the session's time zone, which need not be UTC.
        return value.astimezone(UTC)


def str_enum(enum: type[StrEnum]) -> Enum:
    """A column type storing a StrEnum by its value (VARCHAR, no native enum) and loading the member."""
    return Enum(
        enum,
        native_enum=False,
        length=max(len(m.value) for m in enum) + 8,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeoutError)
"""Errors that say the database is unavailable, not that a statement or its data is wrong:
connection lost or refused, SQLite's busy timeout, a PostgreSQL deadlock or serialization
failure (psycopg's ``OperationalError`` subclasses), no pooled connection in time. The API
answers them 503 with Retry-After; the import hands the file's claim back."""

SQLITE_BUSY_TIMEOUT = 30.0
"""Seconds a SQLite statement waits for another connection's lock before it fails."""


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control from the driver so that "begin" can emit
    # BEGIN IMMEDIATE itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_connect_read_only(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    _sqlite_on_connect(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")  # a write is an error, not a surprise
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_on_begin_read(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite://`` or ``postgresql+psycopg://``)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, pool_size=8, max_overflow=8)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)


T = TypeVar("T")


THREAD_POOL_CONNECTIONS = 8
"""Connections at most of each thread engine (`create_thread_engine`)."""


def create_thread_engine(url: str, *, read_only: bool = False) -> Engine:
    """A sync engine for ``url`` (given in its async form) whose connections are used from worker threads.

    ``sqlite+aiosqlite`` becomes the standard library's sqlite3 (pysqlite),
    with the same pragmas and BEGIN IMMEDIATE (a plain BEGIN and no writes
    when ``read_only``, as in `create_engine`); ``postgresql+psycopg`` is
    psycopg 3 in its sync mode, its transactions READ ONLY when ``read_only``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_sync_engine(
            parsed.set(drivername="sqlite"),
            pool_size=THREAD_POOL_CONNECTIONS // 2,
            max_overflow=THREAD_POOL_CONNECTIONS // 2,
            connect_args={"check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_on_connect_read_only if read_only else _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin_read if read_only else _sqlite_on_begin)
        return engine
    engine = create_sync_engine(
        parsed,
        pool_size=THREAD_POOL_CONNECTIONS // 2,
        max_overflow=THREAD_POOL_CONNECTIONS // 2,
        pool_pre_ping=True,
    )
    return engine.execution_options(postgresql_readonly=True) if read_only else engine


class Database:
    """An engine and its session factory; sessions do not expire on commit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = anyio.Lock() if url.startswith("sqlite") else None
        self._thread_engine: Engine | None = None
        self._thread_sessionmaker: sessionmaker[Session] | None = None
        self._thread_read_engine: Engine | None = None
        self._thread_read_sessionmaker: sessionmaker[Session] | None = None
        self._read_threads: anyio.CapacityLimiter | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        On SQLite, transactions of this process queue on an in-process lock
        before BEGIN IMMEDIATE: the database has one writer at a time anyway,
        and SQLite's busy handler makes a waiting connection sleep in steps of
        up to 100 ms, where the lock hands over at once. Only other processes'
        writers still meet the busy handler. Do not open a write transaction
        while holding one in the same task: it would wait for itself.
        """
        if self._write_lock is None:
            async with self.sessionmaker() as session, session.begin():
                yield session
            return
        async with self._write_lock, self.sessionmaker() as session, session.begin():
            yield session

    async def run_in_transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a worker thread inside one sync transaction; returns its result.

        Committed when ``work`` returns, rolled back when it raises (the
        exception propagates). On SQLite it takes this process's write lock
        first, the same one as `transaction`, so the lock is held only for
        the statements themselves. ``work`` must not touch the event loop.
        """
        if self._thread_sessionmaker is None:
            self._thread_engine = create_thread_engine(self.url)
            self._thread_sessionmaker = sessionmaker(self._thread_engine, expire_on_commit=False)
        factory = self._thread_sessionmaker

        def run() -> T:
            with factory() as session, session.begin():
                return work(session)

        if self._write_lock is None:
            return await anyio.to_thread.run_sync(run)
        async with self._write_lock:
            return await anyio.to_thread.run_sync(run)

    async def run_read(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in a worker thread inside one read-only transaction; returns its result.

        The transaction is rolled back at the end, whatever ``work`` did. On
        SQLite it begins with a plain BEGIN: in WAL mode it never waits for
        the write lock, so status calls do not queue behind imports. Its
        connections refuse writes (SQLite ``PRAGMA query_only``, PostgreSQL
        READ ONLY transactions). Every read of the service goes this way: one
        thread hop per read, where an async session (aiosqlite) takes several
        per statement: a one-row read cost 2.5-4.3 ms of CPU that way against
        0.6-1.1 ms here. ``work`` must not touch the event loop; what it
        returns is detached from its session (columns loaded, no lazy loads).
        """
        if self._thread_read_sessionmaker is None:
            # A pool and threads of their own, as many threads as connections:
            # many API reads at once can neither keep the claims and results of
            # the import from a connection nor fill anyio's default thread pool
            # (which transactions and stores share) with reads waiting for one.
            self._thread_read_engine = create_thread_engine(self.url, read_only=True)
            self._thread_read_sessionmaker = sessionmaker(self._thread_read_engine, expire_on_commit=False)
            self._read_threads = anyio.CapacityLimiter(THREAD_POOL_CONNECTIONS)
        factory = self._thread_read_sessionmaker

        def run() -> T:
            with factory() as session:  # closing it rolls its transaction back
                return work(session)

        return await anyio.to_thread.run_sync(run, limiter=self._read_threads)

    async def dispose(self) -> None:
        await self.engine.dispose()
        for engine in (self._thread_engine, self._thread_read_engine):
            if engine is not None:
                await anyio.to_thread.run_sync(engine.dispose)
