"""Database and storage settings as a deployment sets them: FILEIMPORT_* environment variables."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from fileimport.core.settings import Settings

S3_OPTIONS_JSON = (
    '{"endpoint": "https://s3.example.net", "region": "eu-central-1",'
    ' "access_key_id": "AKIA", "secret_access_key": "s3cr3t", "allow_http": false, "timeout": 30}'
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODE", "DATABASE_URL", "STORAGE_URL", "STORAGE_OPTIONS"):
        monkeypatch.delenv(f"FILEIMPORT_{name}", raising=False)


def test_production_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILEIMPORT_MODE", "production")
    monkeypatch.setenv(
        "FILEIMPORT_DATABASE_URL", "postgresql+psycopg://fileimport:pw@db.internal:5432/fileimport"
    )
    monkeypatch.setenv("FILEIMPORT_STORAGE_URL", "s3://media-bucket/fileimport")
    monkeypatch.setenv("FILEIMPORT_STORAGE_OPTIONS", S3_OPTIONS_JSON)

    settings = Settings()

    assert settings.resolved_database_url == "postgresql+psycopg://fileimport:pw@db.internal:5432/fileimport"
    assert not settings.is_sqlite
    assert settings.resolved_storage_url == "s3://media-bucket/fileimport"
    assert settings.storage_options == {
        "endpoint": "https://s3.example.net",
        "region": "eu-central-1",
        "access_key_id": "AKIA",
        "secret_access_key": "s3cr3t",
        "allow_http": "false",
        "timeout": "30",
    }


@pytest.mark.parametrize("value", ["", "  ", "{}"])
def test_empty_storage_options(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FILEIMPORT_STORAGE_OPTIONS", value)
    assert Settings().storage_options == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("endpoint=https://s3.example.net", "must be a JSON object"),
        ('["endpoint"]', "valid dictionary"),
        ('{"endpoint": {"url": "x"}}', "valid string"),
    ],
)
def test_storage_options_that_are_not_a_json_object_of_strings(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("FILEIMPORT_STORAGE_OPTIONS", value)
    with pytest.raises(ValidationError, match=message):
        Settings()


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:////var/lib/fileimport/db.sqlite3", "sqlite+aiosqlite:////var/lib/fileimport/db.sqlite3"),
    ],
)
def test_database_urls_get_the_async_driver(given: str, used: str) -> None:
    assert Settings(database_url=given).resolved_database_url == used


@pytest.mark.parametrize("url", ["mysql://u@h/d", "postgresql+asyncpg://u@h/d", "db.internal:5432"])
def test_unsupported_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="database_url"):
        Settings(database_url=url)


def test_unsupported_storage_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="s3://bucket/prefix"):
        Settings(storage_url="gs://bucket")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "needs FILEIMPORT_DATABASE_URL"),
        ({"database_url": "sqlite:///x.db"}, "needs FILEIMPORT_DATABASE_URL"),
        ({"database_url": "postgresql://h/d", "storage_url": "memory://"}, "memory://"),
    ],
)
def test_production_mode_refuses_embedded_choices(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(mode="production", **changes)


@pytest.mark.parametrize("age", ["PT9M59S", "PT1M", "PT0S"])
def test_a_blob_sweep_that_could_delete_an_import_in_progress_is_refused(
    monkeypatch: pytest.MonkeyPatch, age: str
) -> None:
    """An import stores its blob before it commits the entry: a sweep of blobs younger than
    10 minutes could delete one between the two (as ``fileimport gc`` refuses too)."""
    monkeypatch.setenv("FILEIMPORT_BLOB_SWEEP_MIN_AGE", age)
    with pytest.raises(ValidationError, match="blob_sweep_min_age"):
        Settings()


def test_a_blob_sweep_of_ten_minutes_and_older_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILEIMPORT_BLOB_SWEEP_MIN_AGE", "PT10M")
    assert Settings().blob_sweep_min_age == timedelta(minutes=10)


def test_a_blob_sweep_interval_of_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILEIMPORT_BLOB_SWEEP_INTERVAL", "PT0S")
    with pytest.raises(ValidationError, match="blob_sweep_interval"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FILEIMPORT_LOG_LEVEL", "LOUD"),  # serve failed on it with a KeyError traceback
        ("FILEIMPORT_PUBLIC_URL", "notaurl"),  # the base of every asset URL
        ("FILEIMPORT_PUBLIC_URL", "ftp://media.example.com"),
        ("FILEIMPORT_FETCH_READ_TIMEOUT", "inf"),  # would wait for ever
        ("FILEIMPORT_WEBHOOK_TIMEOUT", "nan"),
        ("FILEIMPORT_IDEMPOTENCY_TTL", "-PT1H"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("FILEIMPORT_").lower()):
        Settings()


def test_log_level_and_public_url_are_taken_as_people_write_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILEIMPORT_LOG_LEVEL", " warning")
    monkeypatch.setenv("FILEIMPORT_PUBLIC_URL", "https://media.example.com/fileimport/")
    settings = Settings()
    assert (settings.log_level, settings.public_url) == ("WARNING", "https://media.example.com/fileimport")
