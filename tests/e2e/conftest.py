"""Fixtures for end-to-end tests: a running service and loopback origins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.origin import serve_directory
from tests.support.service import RunningService, run_service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunningService]:
    async with run_service(tmp_path / "var") as running:
        yield running


@pytest.fixture(scope="session")
def corpus_origin(corpus_dir: Path) -> Iterator[str]:
    """``../shared/corpus`` served on 127.0.0.1."""
    with serve_directory(corpus_dir) as base_url:
        yield base_url
