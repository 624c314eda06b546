"""Lease files, not jobs: several workers can share one job.

A job's lease (``lease_owner``, ``lease_expires_at``, ``attempts``) moves to
its files; ``import_jobs.claimed_at`` orders jobs for round-robin claims,
and the index on a job's files by status gains ``position`` so that a claim
reads the next pending files in batch order without sorting.
Files pending at upgrade time start unleased, so any worker takes them.

Revision ID: 2a2d3f9c50ea
Revises: 2cec261542ec
Create Date: 2026-11-30 04:23:49.481696
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import fileimport.core.db

revision: str = "2a2d3f9c50ea"
down_revision: str | None = "2cec261542ec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("import_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", fileimport.core.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("leases", sa.Integer(), server_default="0", nullable=False))
        batch_op.drop_index(batch_op.f("ix_import_files_job_id"))
        batch_op.create_index(
            batch_op.f("ix_import_files_job_id"), ["job_id", "status", "position"], unique=False
        )

    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claimed_at", fileimport.core.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.drop_index(batch_op.f("ix_import_jobs_state"))
        batch_op.create_index(batch_op.f("ix_import_jobs_state"), ["state", "claimed_at"], unique=False)
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("attempts")


def downgrade() -> None:
    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("lease_expires_at", fileimport.core.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
        batch_op.drop_index(batch_op.f("ix_import_jobs_state"))
        batch_op.create_index(batch_op.f("ix_import_jobs_state"), ["state", "lease_expires_at"], unique=False)
        batch_op.drop_column("claimed_at")

    with op.batch_alter_table("import_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_import_files_job_id"))
        batch_op.create_index(batch_op.f("ix_import_files_job_id"), ["job_id", "status"], unique=False)
        batch_op.drop_column("leases")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
