"""Import job, import file and idempotency key tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fileimport.core.db import Base, UTCDateTime, str_enum, utcnow
from fileimport.imports.states import FileStatus, JobState


class ImportJob(Base):
    """One posted batch.

    Workers lease its files, not the job (see ``ImportFile``), so several
    workers can share one large job; ``claimed_at`` is when files of the job
    were last leased, and a worker leases from the job served least recently,
    so a huge job does not hold back the jobs posted after it.
    """

    __tablename__ = "import_jobs"
    __table_args__ = (Index(None, "state", "claimed_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    system_name: Mapped[str] = mapped_column(String(255))
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[JobState] = mapped_column(str_enum(JobState), default=JobState.STARTED)
    total_files: Mapped[int] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ImportFile(Base):
    """One file of a job, in batch order, and its final result once it has one.

    While pending, a worker imports it under a lease (``lease_owner`` until
    ``lease_expires_at``, renewed while it runs); a worker that dies stops
    renewing, and once the lease has expired another worker takes the file.
    ``leases`` counts the leases taken, so a file whose import keeps killing
    its worker ends ``failed`` instead of being retried for ever.
    ``attempts`` is the number of requests sent to the origin.
    """

    __tablename__ = "import_files"
    __table_args__ = (
        UniqueConstraint("job_id", "position"),
        # Claims read a job's pending files in batch order: no sort, whatever the job's size.
        Index(None, "job_id", "status", "position"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("import_jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(String(2048))
    file_name: Mapped[str] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    media_type: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[FileStatus] = mapped_column(str_enum(FileStatus), default=FileStatus.PENDING)
    code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    media_id: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    leases: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` seen on a POST, with the SHA-256 of its body and its job."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("project_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("import_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
