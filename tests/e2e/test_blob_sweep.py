"""Blobs no entry references any more are deleted by the sweep, and only those."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from pytest_httpserver import HTTPServer

from fileimport.core.storage import blob_key
from tests.support.images import png_bytes
from tests.support.process import FILEIMPORT, cli, service_env
from tests.support.service import run_service


def stored_keys(data_dir: Path) -> set[str]:
    root = data_dir / "blobs"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


async def test_sweep_deletes_only_old_unreferenced_blobs(tmp_path: Path, httpserver: HTTPServer) -> None:
    data_dir = tmp_path / "var"
    first, second, third = png_bytes(10, 10), png_bytes(11, 11), png_bytes(12, 12)
    key = {b: blob_key(hashlib.sha256(b).hexdigest()) for b in (first, second, third)}

    def serve(path: str, body: bytes) -> None:
        httpserver.clear()
        httpserver.expect_request(path).respond_with_data(body, content_type="image/png")

    def batch(*ids: str) -> dict[str, object]:
        files = [
            {"url": httpserver.url_for(f"/{i}.png"), "id": i, "fileName": i, "metadata": {}} for i in ids
        ]
        return {"systemName": "sweep", "files": files}

    async with run_service(data_dir) as service:
        httpserver.expect_request("/x.png").respond_with_data(first, content_type="image/png")
        httpserver.expect_request("/y.png").respond_with_data(first, content_type="image/png")
        created = await service.import_and_wait(batch("x", "y"))
        assert [r["status"] for r in created["files"]] == ["success", "success"]
        assert stored_keys(data_dir) == {key[first]}  # one blob for the same bytes

        serve("/x.png", second)
        await service.import_and_wait(batch("x"))  # x moves to new bytes; y still holds the first
        serve("/y.png", third)
        updated = await service.import_and_wait(batch("y"))
        assert updated["files"][0]["status"] == "success"
        assert stored_keys(data_dir) == {key[first], key[second], key[third]}

        env = service_env(data_dir)
        # The summary is the command's output, on stdout (`fileimport gc > report`).
        assert cli(env, "gc", "--older-than", "1h") == "deleted 0 unreferenced blob(s)\n"
        assert stored_keys(data_dir) == {key[first], key[second], key[third]}  # too young to go
        refused = subprocess.run(
            [*FILEIMPORT, "gc", "--older-than", "0s"], env=env, capture_output=True, text=True, check=False
        )
        assert refused.returncode == 2
        assert "import in progress" in refused.stderr
        assert stored_keys(data_dir) == {key[first], key[second], key[third]}
        swept = subprocess.run(
            [*FILEIMPORT, "gc", "--older-than", "0s", "--no-imports-running"],
            env={**env, "FILEIMPORT_LOG_LEVEL": "INFO"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert swept.returncode == 0, swept.stderr
        assert swept.stdout == "deleted 1 unreferenced blob(s)\n"
        assert "media.blob.deleted" in swept.stderr  # log lines stay on stderr
        assert stored_keys(data_dir) == {key[second], key[third]}

        for result in created["files"]:
            entry = await service.media_entry(result["mediaId"])
            served = await service.client.get(entry["asset"]["url"])
            assert served.status_code == 200
            assert hashlib.sha256(served.content).hexdigest() == entry["asset"]["sha256"]

        # A blob lost behind the service's back: a clean 404, not a 200 that breaks off.
        entry = await service.media_entry(created["files"][0]["mediaId"])
        (data_dir / "blobs" / entry["asset"]["key"]).unlink()
        missing = await service.client.get(entry["asset"]["url"])
        assert missing.status_code == 404
        assert "missing" in missing.json()["error_details"]["asset"]
