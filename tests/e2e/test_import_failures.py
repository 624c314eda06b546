"""Files that cannot be imported fail alone, each with its own code and reason."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from pytest_httpserver import HTTPServer

from fileimport.projects.config import MediaKind, MediaTypeConfig, ProjectConfig
from tests.support.images import png_bytes
from tests.support.service import RunningService, run_service

SMALL_LIMIT = 50_000


@pytest.fixture
async def guarded_service(tmp_path: Path, service_database_url: str | None) -> AsyncIterator[RunningService]:
    """The address guard at its default (no network opened); only the host name 'localhost' is allowed."""
    config = ProjectConfig(
        media_types=(
            MediaTypeConfig(handle="image", type=MediaKind.IMAGE, max_file_size=SMALL_LIMIT),
            MediaTypeConfig(handle="file", type=MediaKind.FILE, max_file_size=10_000_000),
        )
    )
    async with run_service(
        tmp_path / "var",
        database_url=service_database_url,
        config=config,
        fetch_allowed_networks="",
        fetch_allowed_hosts="localhost",
    ) as running:
        yield running


async def test_each_bad_file_fails_with_its_own_code_and_the_rest_succeed(
    guarded_service: RunningService, httpserver: HTTPServer
) -> None:
    small = png_bytes(32, 24)
    large = png_bytes(400, 400, noise=True)
    assert len(large) > SMALL_LIMIT
    httpserver.expect_request("/good.png").respond_with_data(small, content_type="image/png")
    httpserver.expect_request("/also-good.png").respond_with_data(png_bytes(20, 20), content_type="image/png")
    httpserver.expect_request("/large.png").respond_with_data(large, content_type="image/png")
    httpserver.expect_request("/missing.png").respond_with_data("not here", status=404)
    httpserver.expect_request("/error-page.jpg").respond_with_data(
        "<!doctype html><html><body><h1>Oops</h1></body></html>", content_type="image/jpeg"
    )
    port = httpserver.port
    local = f"http://localhost:{port}"
    files = [
        {"url": f"{local}/good.png", "id": "good", "fileName": "good", "metadata": {}},
        {"url": f"{local}/missing.png", "id": "missing", "fileName": "missing", "metadata": {}},
        {
            "url": f"{local}/error-page.jpg",
            "id": "html",
            "fileName": "html",
            "mediaType": "image",
            "metadata": {},
        },
        {
            "url": f"{local}/large.png",
            "id": "large",
            "fileName": "large",
            "mediaType": "image",
            "metadata": {},
        },
        {
            "url": f"http://127.0.0.1:{port}/good.png",
            "id": "internal",
            "fileName": "internal",
            "metadata": {},
        },
        {"url": f"{local}/also-good.png", "id": "good-2", "fileName": "good 2", "metadata": {"title": "Two"}},
    ]
    status = await guarded_service.import_and_wait({"systemName": "faults", "files": files})

    assert status["state"] == "success"
    results = {r["externalId"]: r for r in status["files"]}
    assert results["good"]["status"] == "success"
    assert results["good-2"]["status"] == "success"
    expected_codes = {
        "missing": "http_404",
        "html": "type_mismatch",
        "large": "too_large",
        "internal": "blocked_address",
    }
    for external_id, code in expected_codes.items():
        result = results[external_id]
        assert (result["status"], result["state"], result["code"]) == ("failed", "failed", code), result
        assert len(result["reason"]) > 20, result
    assert "404" in results["missing"]["reason"]
    assert "text/html" in results["html"]["reason"]
    assert "127.0.0.1" in results["internal"]["reason"]

    entry = await guarded_service.media_entry(results["good"]["mediaId"])
    assert entry["asset"]["sha256"] == hashlib.sha256(small).hexdigest()
    assert (entry["asset"]["width"], entry["asset"]["height"]) == (32, 24)


async def test_files_wait_while_the_blob_store_refuses_writes_and_import_once_it_takes_them(
    service: RunningService, httpserver: HTTPServer
) -> None:
    # A regular file where the store's sha256/ folder must go: every store fails
    # (a full or read-only disk behaves alike; permissions do not stop root).
    # That is no file's fault: failing the files would burn through a backlog
    # of millions in minutes. They stay pending and are imported once the
    # store takes writes again.
    bodies = {name: png_bytes(8 + n, 8) for n, name in enumerate("abcdef")}
    for name, body in bodies.items():
        httpserver.expect_request(f"/{name}.png").respond_with_data(body, content_type="image/png")
    blobs = service.settings.data_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / "sha256").write_text("in the way")
    files = [{"url": httpserver.url_for(f"/{name}.png"), "id": name, "fileName": name} for name in bodies]
    response = await service.post_import({"systemName": "s", "files": files})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]

    await anyio.sleep(2.0)  # ten of the worker's polls: it tried, and was refused
    status = await service.status(job_id)
    assert not status["finished"], status
    assert len(httpserver.log) >= 1, "the worker never tried to import"

    (blobs / "sha256").unlink()
    status = await service.wait_finished(job_id, timeout=60)
    assert [(f["externalId"], f["status"]) for f in status["files"]] == [(n, "success") for n in bodies]
