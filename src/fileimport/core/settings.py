"""Settings, read once from ``FILEIMPORT_*`` environment variables.

Every field can be set by an environment variable named ``FILEIMPORT_`` plus
the field name in upper case (``FILEIMPORT_DATA_DIR``). Defaults are the
embedded mode: SQLite and a local folder under ``data_dir``, API and worker in
one process.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fileimport.core.urls import check_http_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Standard Webhooks' recommended schedule (seconds after the previous attempt):
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
STANDARD_WEBHOOKS_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _option_text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


MIN_SAFE_BLOB_AGE = timedelta(minutes=10)
"""Youngest unreferenced blob a sweep may delete while imports run: an import stores its blob
before it commits the entry that references it (`fileimport.media.tasks`)."""


class Settings(BaseSettings):
    """The service's configuration; see the README for each variable."""

    # No infinite or NaN durations (FILEIMPORT_FETCH_READ_TIMEOUT=inf would wait for ever).
    model_config = SettingsConfigDict(env_prefix="FILEIMPORT_", extra="ignore", allow_inf_nan=False)

    mode: Literal["development", "production"] = "development"
    data_dir: Path = Path("./var")
    database_url: str | None = Field(
        default=None,
        description=(
            "postgresql+psycopg://user:password@host:5432/db (postgresql:// and postgres:// are read "
            "as psycopg) or sqlite+aiosqlite:///path; default SQLite under data_dir."
        ),
    )
    storage_url: str | None = Field(
        default=None,
        description="file:///abs/path or s3://bucket/prefix; default data_dir/blobs.",
    )
    storage_options: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            'obstore options as a JSON object, e.g. {"endpoint": "https://s3.example.net", '
            '"region": "eu-central-1", "allow_http": false}; S3 credentials may instead come '
            "from the AWS_* environment variables."
        ),
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The service's address as clients reach it: the base of asset URLs.",
    )

    # API
    max_batch_files: int = Field(default=1000, ge=1, le=100_000)
    max_body_bytes: ByteSize = ByteSize(16 * 1024 * 1024)
    idempotency_ttl: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    project_max_pending_files: int = Field(
        default=1_000_000,
        ge=1,
        description="A project's quota: files in its unfinished jobs; a POST that would exceed it is a 429.",
    )

    # Worker
    worker_concurrency: int = Field(default=16, ge=1, le=1024)
    worker_lease_seconds: float = Field(default=30.0, gt=0)
    worker_poll_seconds: float = Field(
        default=0.25, gt=0, description="How often an idle worker looks for files to import."
    )
    blob_sweep_interval: timedelta = Field(
        default=timedelta(hours=1),
        gt=timedelta(0),
        description="How often a worker deletes unreferenced blobs.",
    )
    blob_sweep_min_age: timedelta = Field(
        default=timedelta(hours=1),
        ge=MIN_SAFE_BLOB_AGE,
        description="Unreferenced blobs younger than this are kept; at least 10 minutes, since an "
        "import stores its blob before it commits the entry that references it.",
    )
    file_max_leases: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Leases a file may take without finishing (its worker died) before it is tried "
        "alone; interrupted alone too, it fails.",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="`fileimport worker` serves Prometheus /metrics on this port (none by default).",
    )
    worker_metrics_host: str = Field(default="127.0.0.1", description="Interface for worker_metrics_port.")

    # Fetching
    fetch_allowed_networks: Annotated[list[IPNetwork], NoDecode] = Field(default_factory=list)
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_block_public: bool = Field(
        default=False, description="Refuse public addresses too: only the allowed networks/hosts."
    )
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_connect_timeout: float = Field(default=10.0, gt=0)
    fetch_read_timeout: float = Field(default=30.0, gt=0)
    fetch_deadline_base: float = Field(default=60.0, gt=0)
    fetch_deadline_min_rate: ByteSize = ByteSize(256 * 1024)
    fetch_max_attempts: int = Field(default=4, ge=1, le=20)
    fetch_backoff_base: float = Field(default=1.0, ge=0)
    fetch_backoff_max: float = Field(default=60.0, ge=0)
    fetch_per_origin_concurrency: int = Field(default=4, ge=1, le=256)
    fetch_chunk_bytes: int = Field(default=1024 * 1024, ge=4096)

    # Webhooks
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [float(s) for s in STANDARD_WEBHOOKS_SCHEDULE]
    )
    webhook_timeout: float = Field(default=15.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = False

    @field_validator("database_url", mode="before")
    @classmethod
    def _normalise_database_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = value.strip()
        if not url:
            return None
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError("must be a URL such as postgresql+psycopg://user@host:5432/db")
        scheme = scheme.lower()
        # The service is async: plain PostgreSQL and SQLite URLs mean their async drivers.
        if scheme in {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg_async"}:
            return f"postgresql+psycopg://{rest}"
        if scheme in {"sqlite", "sqlite+aiosqlite"}:
            return f"sqlite+aiosqlite://{rest}"
        raise ValueError(
            f"unsupported database {scheme!r}: use postgresql+psycopg:// (PostgreSQL) or sqlite+aiosqlite://"
        )

    @field_validator("storage_url", mode="before")
    @classmethod
    def _check_storage_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = value.strip()
        if not url:
            return None
        scheme = url.partition("://")[0].lower()
        if scheme not in {"file", "s3", "s3a", "memory"}:
            raise ValueError("must be file:///absolute/path, s3://bucket/prefix or memory://")
        return url

    @field_validator("storage_options", mode="before")
    @classmethod
    def _parse_storage_options(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object of option names to values: {exc}") from None
        if isinstance(value, dict):
            # obstore takes every option as a string; JSON true/false/numbers are natural to write.
            return {str(key): _option_text(item) for key, item in value.items()}
        return value

    @field_validator("fetch_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            return [ipaddress.ip_network(str(p), strict=False) for p in parts]
        return parts

    @field_validator("fetch_allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            return [str(p).lower().rstrip(".") for p in parts]
        return parts

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        problem = check_http_url(value)
        if problem is not None:
            raise ValueError(
                f"{problem} (the service's address as clients reach it, e.g. https://media.example.com)"
            )
        return value.rstrip("/")

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            schedule = [float(p) for p in parts]
            if any(s < 0 for s in schedule):
                raise ValueError("webhook retry delays must be >= 0 seconds")
            return schedule
        return parts

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.mode == "production":
            if not self.database_url or self.database_url.startswith("sqlite"):
                raise ValueError("production mode needs FILEIMPORT_DATABASE_URL (PostgreSQL)")
            if self.resolved_storage_url.startswith("memory:"):
                raise ValueError("production mode refuses FILEIMPORT_STORAGE_URL=memory:// (lost on restart)")
            if any(net.prefixlen == 0 for net in self.fetch_allowed_networks):
                raise ValueError("production mode refuses FILEIMPORT_FETCH_ALLOWED_NETWORKS=0.0.0.0/0")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``data_dir/fileimport.sqlite3``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fileimport.sqlite3').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        """The blob storage URL, defaulting to ``data_dir/blobs``."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "blobs").resolve().as_uri()

    @property
    def spool_dir(self) -> Path:
        """Local folder where downloads are spooled before they are stored."""
        return (self.data_dir / "spool").resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
