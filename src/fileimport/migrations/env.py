"""Alembic environment: runs migrations on the configured database (async)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from fileimport.core.db import create_engine
from fileimport.core.models import Base
from fileimport.core.settings import get_settings

config = context.config
target_metadata = Base.metadata

MIGRATION_LOCK_KEY = 0x66696C65696D7074
"""PostgreSQL advisory lock held while migrating (any constant unique to this application)."""


def _database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Every machine may run `fileimport migrate` as it starts: the
            # others wait here, then find the schema at head. (SQLite's
            # BEGIN IMMEDIATE serialises them already.)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
