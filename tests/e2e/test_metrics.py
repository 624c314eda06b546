"""/metrics counts what the pipeline did; an empty body is its own failure."""

from __future__ import annotations

import re

from pytest_httpserver import HTTPServer

from tests.support.images import png_bytes
from tests.support.service import RunningService


def sample(metrics: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_count_files_bytes_and_webhooks(
    service: RunningService, httpserver: HTTPServer
) -> None:
    picture = png_bytes(9, 9)
    httpserver.expect_request("/a.png").respond_with_data(picture, content_type="image/png")
    httpserver.expect_request("/empty.png").respond_with_data(b"", content_type="image/png")
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    before = (await service.client.get("/metrics")).text
    status = await service.import_and_wait(
        {
            "systemName": "metrics",
            "webhook": httpserver.url_for("/hook"),
            "files": [
                {"url": httpserver.url_for("/a.png"), "id": "a", "fileName": "a", "metadata": {}},
                {"url": httpserver.url_for("/empty.png"), "id": "e", "fileName": "e", "metadata": {}},
            ],
        }
    )
    empty = status["files"][1]
    assert (empty["status"], empty["code"]) == ("failed", "empty_file")
    assert "empty body" in empty["reason"]
    final = await service.wait_webhook(status["id"])
    assert final["webhook"]["state"] == "delivered"

    after = (await service.client.get("/metrics")).text
    files = "fileimport_files_total"
    assert (
        sample(after, files, '{code="",status="success"}')
        - sample(before, files, '{code="",status="success"}')
        == 1
    )
    failed = '{code="empty_file",status="failed"}'
    assert sample(after, files, failed) - sample(before, files, failed) == 1
    fetched = "fileimport_fetched_bytes_total"
    assert sample(after, fetched) - sample(before, fetched) == len(picture)
    seconds = "fileimport_file_seconds_count"
    assert sample(after, seconds) - sample(before, seconds) == 2
    jobs = 'fileimport_jobs_finished_total{state="success"}'
    assert sample(after, jobs) - sample(before, jobs) == 1
    hooks = 'fileimport_webhook_attempts_total{outcome="delivered"}'
    assert sample(after, hooks) - sample(before, hooks) == 1
