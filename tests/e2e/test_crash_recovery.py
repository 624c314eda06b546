"""kill -9 in the middle of a 1000-file job, then start again: the job finishes cleanly."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from tests.support.images import png_bytes
from tests.support.origin import serve_directory
from tests.support.process import ServiceProcess, prepare, serve_process, service_env

pytestmark = [pytest.mark.corpus, pytest.mark.slow]


def wait_status(service: ServiceProcess, job_id: str, until: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = httpx2.get(
            f"{service.base_url}/api/v1/import/files/status",
            params={"id": job_id},
            headers=service.headers,
            timeout=30,
        ).json()
        if until(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def record_webhooks(httpserver: HTTPServer) -> list[Request]:
    """The requests POSTed to ``httpserver``'s ``/hook`` (answered 200), in a list that fills as they come."""
    hooks: list[Request] = []

    def receive(request: Request) -> Response:
        hooks.append(request)
        return Response("ok")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(receive)
    return hooks


def wait_for_webhooks(hooks: list[Request], timeout: float = 30.0) -> None:
    """Until a webhook has arrived in ``hooks`` (the test's receiver appends), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not hooks and time.monotonic() < deadline:
        time.sleep(0.05)


def test_killed_mid_job_then_restarted_finishes_exactly_once(
    tmp_path: Path, corpus_dir: Path, corpus_manifest: dict[str, dict[str, Any]], httpserver: HTTPServer
) -> None:
    hooks = record_webhooks(httpserver)
    data_dir = tmp_path / "var"
    env = service_env(data_dir, FILEIMPORT_WORKER_LEASE_SECONDS="2", FILEIMPORT_WORKER_POLL_SECONDS="0.2")
    token = prepare(env)
    secret = _webhook_secret(data_dir)
    icons = sorted(p for p in corpus_manifest if p.startswith("icons/"))

    with serve_directory(corpus_dir, delay=0.01) as origin:
        files = [
            {"url": f"{origin}/{quote(p)}", "id": p, "fileName": Path(p).stem, "metadata": {}} for p in icons
        ]
        batch = {"systemName": "crash", "webhook": httpserver.url_for("/hook"), "files": files}
        with serve_process(env, token) as service:
            response = httpx2.post(
                f"{service.base_url}/api/v1/import/files", json=batch, headers=service.headers, timeout=60
            )
            job_id = response.json()["id"]
            before = wait_status(service, job_id, lambda s: s["progress"]["pending"] <= 700, timeout=120)
            service.process.kill()  # SIGKILL: no cleanup of any kind
            service.process.wait()
        assert not before["finished"], "the job finished before the kill; slow the origin down"
        # A kill mid-batch leaves part files in the killed process's own folder;
        # one is made sure of here. The restarted worker must remove them.
        parts = list((data_dir / "blobs" / ".parts").glob(f"*-{service.process.pid}"))
        assert parts, "the killed service stored no blob through its parts folder"
        (parts[0] / "left-by-the-kill.0123456789ab").write_bytes(b"half a blob")

        with serve_process(env, token) as service:
            final = wait_status(service, job_id, lambda s: s["finished"], timeout=180)
            wait_for_webhooks(hooks)

    assert final["state"] == "success"
    results = final["files"]
    assert [r["externalId"] for r in results] == icons  # exactly one result each, in batch order
    assert {r["status"] for r in results} == {"success"}

    db = sqlite3.connect(data_dir / "fileimport.sqlite3")
    entries = db.execute(
        "SELECT external_id, asset_key FROM media_entries WHERE system_name='crash'"
    ).fetchall()
    assert sorted(e[0] for e in entries) == icons  # no duplicated entry
    assert {r["mediaId"] for r in results} == {row[0] for row in db.execute("SELECT id FROM media_entries")}
    referenced = {e[1] for e in entries}
    stored = {
        p.relative_to(data_dir / "blobs").as_posix() for p in (data_dir / "blobs").rglob("*") if p.is_file()
    }
    assert stored == referenced  # no unreferenced blob, none missing
    assert [p for p in (data_dir / "spool").rglob("*") if p.is_file()] == []

    assert len(hooks) >= 1
    body = hooks[-1].get_data()
    payload = Webhook(secret).verify(body, {k.lower(): v for k, v in hooks[-1].headers.items()})
    assert payload["id"] == job_id
    assert payload["overview"]["success"] == 1000


def _webhook_secret(data_dir: Path) -> str:
    db = sqlite3.connect(data_dir / "fileimport.sqlite3")
    (secret,) = db.execute("SELECT webhook_secret FROM projects WHERE name='default'").fetchone()
    return str(secret)


def test_a_job_left_started_with_every_file_done_is_finished_with_its_webhook_at_start(
    tmp_path: Path, corpus_dir: Path, corpus_manifest: dict[str, dict[str, Any]], httpserver: HTTPServer
) -> None:
    """Versions before 2026-11-30 ended a job in a transaction after its last result's, and a
    worker killed in between left the job ``started`` for ever: every file done, nothing to
    claim, no webhook. Such a database is made here by hand; a started worker finishes the job."""
    hooks = record_webhooks(httpserver)
    data_dir = tmp_path / "var"
    env = service_env(data_dir)
    token = prepare(env)
    secret = _webhook_secret(data_dir)
    icons = sorted(p for p in corpus_manifest if p.startswith("icons/"))[:3]

    with serve_directory(corpus_dir) as origin, serve_process(env, token) as service:
        files = [{"url": f"{origin}/{quote(p)}", "id": p, "fileName": "icon"} for p in icons]
        batch = {"systemName": "stranded", "webhook": httpserver.url_for("/hook"), "files": files}
        job_id = httpx2.post(
            f"{service.base_url}/api/v1/import/files", json=batch, headers=service.headers, timeout=60
        ).json()["id"]
        wait_status(service, job_id, lambda s: s["finished"], timeout=60)
        wait_for_webhooks(hooks)
    assert len(hooks) == 1
    hooks.clear()

    with sqlite3.connect(data_dir / "fileimport.sqlite3") as db:  # the state the kill left
        db.execute("UPDATE import_jobs SET state='started', finished_at=NULL WHERE id=?", (job_id,))
        db.execute("DELETE FROM webhook_deliveries WHERE job_id=?", (job_id,))
    with serve_process(env, token) as service:
        final = wait_status(service, job_id, lambda s: s["finished"], timeout=30)
        wait_for_webhooks(hooks)

    assert final["state"] == "success"
    assert final["finishedAt"] is not None
    assert [f["status"] for f in final["files"]] == ["success"] * 3
    assert len(hooks) == 1
    payload = Webhook(secret).verify(hooks[0].get_data(), {k.lower(): v for k, v in hooks[0].headers.items()})
    assert (payload["id"], payload["overview"]["success"]) == (job_id, 3)


def test_a_file_that_kills_its_worker_fails_alone_and_the_files_it_took_down_import(tmp_path: Path) -> None:
    """A crash loop: every time a worker downloads poison.png, it dies (SIGKILL, as a crash in a
    decoder would), taking the files it held with it. With FILE_MAX_LEASES=1 each of those is
    then tried alone; poison.png kills its worker even alone and fails as interrupted, the
    others import."""
    root = tmp_path / "origin"
    root.mkdir()
    names = ["poison.png"] + [f"{i:02d}.png" for i in range(11)]
    for i, name in enumerate(names):
        (root / name).write_bytes(png_bytes(8 + i, 8, noise=True, seed=i))
    serve_pid: list[int] = []

    def kill_the_worker(path: str) -> None:
        if path == "/poison.png" and serve_pid:
            for task in Path(f"/proc/{serve_pid[0]}/task").glob("*"):
                for child in (task / "children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)

    env = service_env(
        tmp_path / "var",
        FILEIMPORT_FILE_MAX_LEASES="1",
        FILEIMPORT_WORKER_LEASE_SECONDS="1",
        FILEIMPORT_WORKER_POLL_SECONDS="0.2",
        FILEIMPORT_WORKER_CONCURRENCY="4",
    )
    token = prepare(env)
    with (
        serve_directory(root, delay=0.2, on_request=kill_the_worker) as origin,
        serve_process(env, token, args=["--no-worker", "--worker-processes", "1"]) as service,
    ):
        serve_pid.append(service.process.pid)
        files = [{"url": f"{origin}/{name}", "id": name, "fileName": name} for name in names]
        job_id = httpx2.post(
            f"{service.base_url}/api/v1/import/files",
            json={"systemName": "loop", "files": files},
            headers=service.headers,
            timeout=30,
        ).json()["id"]
        final = wait_status(service, job_id, lambda s: s["finished"], timeout=90)

    results = {f["externalId"]: f for f in final["files"]}
    assert (results["poison.png"]["status"], results["poison.png"]["code"]) == ("failed", "interrupted")
    assert "the last time alone in its worker" in results["poison.png"]["reason"]
    assert {name: results[name]["status"] for name in names[1:]} == dict.fromkeys(names[1:], "success")
