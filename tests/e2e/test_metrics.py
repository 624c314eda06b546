"""/metrics counts what the pipeline did; an empty body is its own failure."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx2
from pytest_httpserver import HTTPServer

from tests.support.images import png_bytes
from tests.support.process import FILEIMPORT, prepare, service_env
from tests.support.service import RunningService, free_port


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


def test_a_standalone_worker_serves_its_metrics_on_the_port_asked_for(tmp_path: Path) -> None:
    """Production runs `fileimport worker` processes with no API: FILEIMPORT_WORKER_METRICS_PORT
    gives each its own /metrics; a port in use stops the worker in one line."""
    port = free_port()
    env = service_env(tmp_path / "var", FILEIMPORT_WORKER_METRICS_PORT=str(port))
    prepare(env)
    worker = subprocess.Popen([*FILEIMPORT, "worker"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                metrics = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx2.HTTPError:
                assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
                assert time.monotonic() < deadline, "no /metrics within 30 s"
                time.sleep(0.1)
        assert metrics.status_code == 200
        assert "fileimport_fetched_bytes_total 0.0" in metrics.text

        second = subprocess.run([*FILEIMPORT, "worker"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.startswith(f"cannot serve metrics on 127.0.0.1:{port}: ")
    finally:
        worker.terminate()
        worker.wait(20)
