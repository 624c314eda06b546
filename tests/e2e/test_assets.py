"""Asset downloads answer conditional requests as RFC 9110 §13 says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import png_bytes
from tests.support.origin import serve_directory
from tests.support.service import RunningService


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "cat.png").write_bytes(png_bytes(12, 8))
    with serve_directory(root) as base_url:
        yield base_url


@pytest.fixture
async def asset(service: RunningService, origin: str) -> dict[str, str]:
    """The imported PNG's ``asset`` object (``url``, ``sha256``, ...)."""
    status = await service.import_and_wait(
        {"systemName": "assets", "files": [{"url": f"{origin}/cat.png", "id": "cat", "fileName": "cat"}]}
    )
    assert status["files"][0]["status"] == "success", status
    entry = await service.media_entry(status["files"][0]["mediaId"])
    asset: dict[str, str] = entry["asset"]
    return asset


@pytest.mark.parametrize(
    "if_none_match",
    [
        '"{sha}"',
        'W/"{sha}"',
        "*",
        '"other" ,  W/"{sha}"',
        '"other",W/"{sha}"',
        "{sha}",
    ],
)
async def test_if_none_match_is_compared_weakly(
    service: RunningService, asset: dict[str, str], if_none_match: str
) -> None:
    """RFC 9110 §13.1.2: ``*`` or any listed tag, weak or strong, that matches the ETag is a 304."""
    response = await service.client.get(
        asset["url"], headers={"If-None-Match": if_none_match.format(sha=asset["sha256"])}
    )
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == f'"{asset["sha256"]}"'
    head = await service.client.head(
        asset["url"], headers={"If-None-Match": if_none_match.format(sha=asset["sha256"])}
    )
    assert head.status_code == 304


async def test_if_none_match_on_several_field_lines(service: RunningService, asset: dict[str, str]) -> None:
    headers = [("If-None-Match", '"other"'), ("If-None-Match", f'W/"{asset["sha256"]}"')]
    response = await service.client.get(asset["url"], headers=headers)
    assert response.status_code == 304


@pytest.mark.parametrize(
    "if_none_match", ['"other"', 'W/"other", "another"', '"{sha}', "W/", "", ",", '*, "other"']
)
async def test_if_none_match_without_a_match_sends_the_bytes(
    service: RunningService, asset: dict[str, str], if_none_match: str
) -> None:
    response = await service.client.get(
        asset["url"], headers={"If-None-Match": if_none_match.format(sha=asset["sha256"])}
    )
    assert response.status_code == 200
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_broken_blob_store_is_a_503_to_retry_not_a_500(
    service: RunningService, asset: dict[str, str]
) -> None:
    """The store's folder replaced by a file (a lost mount, say): the download and /readyz say
    what failed, and the download works again once the folder is back."""
    blobs = service.settings.data_dir / "blobs"
    blobs.rename(blobs.with_name("blobs-away"))
    blobs.write_bytes(b"not a folder")
    try:
        response = await service.client.get(asset["url"])
        ready = await service.client.get("/readyz")
    finally:
        blobs.unlink()
        blobs.with_name("blobs-away").rename(blobs)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "30"
    assert response.json()["error_details"] == {"storage": "unavailable; retry later"}
    assert str(service.settings.data_dir) not in response.text
    assert ready.status_code == 503
    assert (
        ready.json()["error_details"]["storage"] == "unreachable: the storage folder is a file, not a folder"
    )
    assert str(service.settings.data_dir) not in ready.text
    assert (await service.client.get(asset["url"])).status_code == 200
