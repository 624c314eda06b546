"""Whether the database's schema is the one this version of the service was written for.

`fileimport migrate` (Alembic, ``fileimport/migrations``) brings it there. A
service upgraded without it would fail every write that names a new column:
``/readyz`` says so, and a worker waits for it instead of taking files.
"""

from __future__ import annotations

import functools

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

NOT_MIGRATED = "not migrated: run 'fileimport migrate'"


def migrations_config() -> Config:
    """The Alembic configuration of this package's migrations (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", "fileimport:migrations")
    return config


@functools.cache
def schema_head() -> str:
    """The newest migration's revision id: the schema this code expects."""
    head = ScriptDirectory.from_config(migrations_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError("fileimport/migrations holds no migration")
    return head


def schema_problem(session: Session) -> str | None:
    """What keeps the database from this code's schema, or None when it is at `schema_head`.

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
    if version != schema_head():
        return f"at migration {version}, not {schema_head()} as this version needs: run 'fileimport migrate'"
    return None
