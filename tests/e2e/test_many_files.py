"""A 1000-file job of real icons through the real ``fileimport serve`` process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest

from tests.support.process import prepare, serve_process, service_env

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

MAX_PEAK_RSS = 300 * 1024 * 1024


def test_thousand_icons_in_one_job_with_bounded_memory(
    tmp_path: Path, corpus_origin: str, corpus_manifest: dict[str, dict[str, Any]]
) -> None:
    icons = sorted(p for p in corpus_manifest if p.startswith("icons/"))
    assert len(icons) == 1000
    env = service_env(tmp_path / "var")
    token = prepare(env)
    files = [
        {"url": f"{corpus_origin}/{quote(path)}", "id": path, "fileName": Path(path).stem, "metadata": {}}
        for path in icons
    ]
    with serve_process(env, token) as service:
        response = httpx2.post(
            f"{service.base_url}/api/v1/import/files",
            json={"systemName": "icons", "files": files},
            headers=service.headers,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 300
        while True:
            status = httpx2.get(
                f"{service.base_url}/api/v1/import/files/status",
                params={"id": job_id},
                headers=service.headers,
                timeout=30,
            ).json()
            if status["finished"]:
                break
            assert time.monotonic() < deadline, status["progress"]
            time.sleep(0.2)
        peak = service.peak_rss_bytes()
        print(f"1000-icon job: {status['progress']}, service peak RSS {peak / 2**20:.0f} MiB")

    assert status["state"] == "success"
    assert len(status["files"]) == 1000
    failed = [f for f in status["files"] if f["status"] != "success"]
    assert failed == []
    assert status["progress"]["success"] == 1000
    assert peak < MAX_PEAK_RSS, f"peak RSS {peak / 2**20:.0f} MiB"
