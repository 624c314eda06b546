"""Without PostgreSQL its tests skip on a laptop and fail on CI."""

from __future__ import annotations

import pytest

from tests.support.postgres import DEFAULT_URL, URL_ENV, configured_url, require_postgres

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


def test_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert configured_url().render_as_string() == DEFAULT_URL


def test_unreachable_server_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, UNREACHABLE)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r"not reachable at .*127\.0\.0\.1:1.*FILEIMPORT_TEST_POSTGRES_URL"
    ):
        require_postgres()


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_unreachable_server_fails_on_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv(URL_ENV, UNREACHABLE)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true: PostgreSQL tests must run"):
        require_postgres()
