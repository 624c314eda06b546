"""Media library entry table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fileimport.core.db import Base, UTCDateTime, utcnow

# Longest origin validators kept for conditional re-imports (characters).
MAX_ETAG = 512
MAX_LAST_MODIFIED = 64


class MediaEntry(Base):
    """A media library entry and its current asset.

    The key is (``project_id``, ``system_name``, ``external_id``); the unique
    constraint makes two racing imports of one key end in one entry.
    """

    __tablename__ = "media_entries"
    __table_args__ = (UniqueConstraint("project_id", "system_name", "external_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    system_name: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1)
    media_type: Mapped[str] = mapped_column(String(100))
    file_name: Mapped[str] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)

    asset_key: Mapped[str] = mapped_column(String(200))
    mime_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration: Mapped[float | None] = mapped_column(Float)

    source_url: Mapped[str] = mapped_column(String(2048))
    origin_etag: Mapped[str | None] = mapped_column(String(MAX_ETAG))
    origin_last_modified: Mapped[str | None] = mapped_column(String(MAX_LAST_MODIFIED))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # ``startedAt`` of the newest job whose import of this key was recorded:
    # an older job's import, recorded later, must not undo it. NULL for
    # entries written before this column existed.
    job_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
