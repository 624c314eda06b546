"""Fixtures shared by every test layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CORPUS_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus").resolve()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """``../shared/corpus``; tests that need it skip when it is absent."""
    if not (CORPUS_DIR / "MANIFEST.json").is_file():
        pytest.skip(f"sample corpus not found at {CORPUS_DIR}")
    return CORPUS_DIR


@pytest.fixture(scope="session")
def corpus_manifest(corpus_dir: Path) -> dict[str, dict[str, Any]]:
    """MANIFEST.json entries keyed by their path relative to the corpus."""
    data = json.loads((corpus_dir / "MANIFEST.json").read_text())
    return {entry["path"]: entry for entry in data["files"]}
