"""Entries remember the newest job that imported them, so that an older job cannot undo it.

``media_entries.job_started_at`` is the ``startedAt`` of the newest job whose
import of the entry's key was recorded; an import from a job started before
it is recorded as ``skipped`` and changes nothing. Entries written before
this revision have NULL: the next import of each sets it.

Revision ID: 7c1e4b2d9a10
Revises: 2a2d3f9c50ea
Create Date: 2026-11-30 19:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import fileimport.core.db

revision: str = "7c1e4b2d9a10"
down_revision: str | None = "2a2d3f9c50ea"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("media_entries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("job_started_at", fileimport.core.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("media_entries", schema=None) as batch_op:
        batch_op.drop_column("job_started_at")
