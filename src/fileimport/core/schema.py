"""Whether the database's schema is the one this version of the service was written for.

`fileimport migrate` (Alembic, ``fileimport/migrations``) brings it there. A
service upgraded without it would fail every write that names a new column:
``/readyz`` says so, and a worker waits for it instead of taking files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from alembic.config import Config

NOT_MIGRATED = "not migrated: run 'fileimport migrate'"

SCHEMA_HEAD = "7c1e4b2d9a10"
"""The newest migration's revision id: the schema this code expects. Written here, not read
from Alembic's scripts, so that a serving process does not load Alembic (about 9 MB of
memory); ``tests/integration/test_migrations.py`` fails when a new migration leaves it behind."""


def migrations_config(database_url: str | None = None) -> Config:
    """The Alembic configuration of this package's migrations (no ``alembic.ini`` needed),
    for ``database_url`` when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "fileimport:migrations")
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))  # configparser escape
    return config


def schema_problem(session: Session) -> str | None:
    """What keeps the database from this code's schema, or None when it is at `SCHEMA_HEAD`.

    Sync, for `Database.run_read`. Raises SQLAlchemy's errors other than a
    missing migrations table (the database unreachable, say).
    """
    try:
        version = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if "alembic_version" in str(exc.orig or exc):  # no such table / UndefinedTable
            return NOT_MIGRATED
        raise
    if version is None:
        return NOT_MIGRATED
    if version != SCHEMA_HEAD:
        return f"at migration {version}, not {SCHEMA_HEAD} as this version needs: run 'fileimport migrate'"
    return None
