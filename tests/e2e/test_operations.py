"""The operational routes answer probes, with GET and with HEAD alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from fileimport.app import create_app
from fileimport.core.settings import Settings
from tests.support.service import RunningService, run_service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunningService]:
    async with run_service(tmp_path / "var", run_worker=False) as running:
        yield running


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_head_answers_like_get(service: RunningService, path: str) -> None:
    get = await service.client.get(path)
    head = await service.client.head(path)
    assert get.status_code == head.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]
    # The connection still works after a HEAD: no body was left on the wire.
    assert (await service.client.get(path)).status_code == 200


async def test_head_readyz_is_503_when_not_ready(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "never-migrated"), run_worker=False)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://service") as client:
            ready = await client.head("/readyz")
    assert ready.status_code == 503


async def test_readyz_is_503_when_the_storage_folder_refuses_writes(tmp_path: Path) -> None:
    """A folder that looks writable to root but takes no new file (as a read-only mount or a full disk)."""
    async with run_service(
        tmp_path / "var", run_worker=False, storage_url=Path("/proc/self/fdinfo").as_uri()
    ) as service:
        ready = await service.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    problems = ready.json()["error_details"]
    assert set(problems) == {"storage"}
    assert problems["storage"].startswith("the storage folder refuses writes: "), problems


async def test_readyz_says_when_the_storage_folder_became_a_file(tmp_path: Path) -> None:
    """Before: "storage folder '<storage folder>' does not exist", although the path existed."""
    async with run_service(
        tmp_path / "var", run_worker=False, storage_url=(tmp_path / "blobs").as_uri()
    ) as service:
        (tmp_path / "blobs").rmdir()
        (tmp_path / "blobs").write_text("")
        ready = await service.client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["error_details"] == {
        "storage": "unreachable: the storage folder is a file, not a folder"
    }
