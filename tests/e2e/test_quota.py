"""A project's quota of files in unfinished jobs: 429 with Retry-After, in the reference's error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.origin import serve_directory
from tests.support.service import RunningService, create_tenant, run_service

QUOTA = 5


def batch(count: int, prefix: str = "f", base_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "systemName": "quota",
        "files": [
            {"url": f"{base_url}/{prefix}{i}.jpg", "id": f"{prefix}{i}", "fileName": f"{prefix}{i}"}
            for i in range(count)
        ],
    }


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunningService]:
    """Jobs stay unfinished: no worker."""
    async with run_service(tmp_path / "var", run_worker=False, project_max_pending_files=QUOTA) as running:
        yield running


async def test_a_batch_over_the_quota_is_429_with_retry_after(service: RunningService) -> None:
    assert (await service.post_import(batch(3, "a"))).status_code == 200
    assert (await service.post_import(batch(2, "b"))).status_code == 200

    response = await service.post_import(batch(1, "c"))

    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    payload = response.json()
    assert set(payload) == {"status", "error", "error_details"}
    assert (payload["status"], payload["error"]) == (429, "Too Many Requests")
    details = payload["error_details"]
    assert (details["limit"], details["pending"]) == (QUOTA, 5)
    assert "FILEIMPORT_PROJECT_MAX_PENDING_FILES" in details["files"]


async def test_the_quota_is_per_project(service: RunningService) -> None:
    assert (await service.post_import(batch(QUOTA))).status_code == 200
    assert (await service.post_import(batch(1, "x"))).status_code == 429
    other = await create_tenant(service.settings.resolved_database_url, "other")
    response = await service.client.post("/api/v1/import/files", json=batch(QUOTA), headers=other.headers)
    assert response.status_code == 200, response.text


async def test_a_retried_post_answers_its_job_even_over_the_quota(service: RunningService) -> None:
    key = {"Idempotency-Key": "batch-1"}
    first = await service.post_import(batch(QUOTA), headers=key)
    again = await service.post_import(batch(QUOTA), headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


async def test_a_batch_larger_than_the_quota_is_400(service: RunningService) -> None:
    """No retry could ever help, so it is not a 429."""
    response = await service.post_import(batch(QUOTA + 1))
    assert response.status_code == 400, response.text
    assert set(response.json()["error_details"]) == {"files"}


async def test_finished_jobs_free_the_quota(tmp_path: Path) -> None:
    origin_root = tmp_path / "origin"
    origin_root.mkdir()
    with serve_directory(origin_root) as origin:
        async with run_service(tmp_path / "var", project_max_pending_files=QUOTA) as service:
            # Every file is a 404 at the origin: the job finishes quickly, its files failed.
            status = await service.import_and_wait(batch(QUOTA, "gone", origin))
            assert status["state"] == "success"
            response = await service.post_import(batch(QUOTA, "next", origin))
            assert response.status_code == 200, response.text
