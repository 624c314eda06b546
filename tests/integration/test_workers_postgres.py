"""The production topology on one machine: PostgreSQL, an S3 bucket, an API process and two workers.

Every process has its own data folder (nothing local is shared, as on
separate machines) and is configured only by ``FILEIMPORT_*`` environment
variables. Workers lease files a few at a time, so the job of 200 files
must be shared by both workers; six more jobs import overlapping keys of
one system at the same time. Each file must get exactly one result and
one lease, each key exactly one media library entry, each job one webhook.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy.engine import make_url
from werkzeug import Request, Response

from fileimport.core.storage import blob_key, open_storage
from tests.support.images import png_bytes
from tests.support.origin import serve_directory
from tests.support.process import FILEIMPORT, ServiceProcess, prepare, serve_process, service_env
from tests.support.s3 import S3Bucket

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.slow]

BULK_FILES = 200
SHARED_KEYS = 40
SYNC_JOBS = 6
SYNC_JOB_FILES = 30
JOB_TIMEOUT = 45.0


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class WorkerProcess:
    """``python -m fileimport worker`` with its JSON log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen([*FILEIMPORT, "worker"], env=env, stderr=self._log)

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def wait_started(self, timeout: float = 30.0) -> str:
        """The worker's lease owner name, once it logged ``worker.started``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode}: {self.log_path.read_text()}"
                )
            for event in self.events():
                if event["event"] == "worker.started":
                    return str(event["owner"])
            time.sleep(0.05)
        raise AssertionError(f"worker did not start within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback origin with 200 bulk files and 40 shared ones, each with its own bytes."""
    root = tmp_path / "origin"
    root.mkdir()
    contents: dict[str, bytes] = {}
    for name, seed in [(f"bulk-{i:03d}.png", i) for i in range(BULK_FILES)] + [
        (f"shared-{i:02d}.png", 10_000 + i) for i in range(SHARED_KEYS)
    ]:
        contents[name] = png_bytes(12 + seed % 9, 10, noise=True, seed=seed)
        (root / name).write_bytes(contents[name])
    # A little latency per file, so that a job outlasts a worker's poll interval.
    with serve_directory(root, delay=0.005) as base_url:
        yield base_url, contents


async def stored_keys(storage_url: str, options: dict[str, str]) -> set[str]:
    return {key async for key in open_storage(storage_url, options).list_keys()}


def post_job(api: ServiceProcess, body: dict[str, Any]) -> str:
    response = httpx2.post(f"{api.base_url}/api/v1/import/files", json=body, headers=api.headers, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_finished(api: ServiceProcess, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    finished: dict[str, dict[str, Any]] = {}
    while len(finished) < len(job_ids):
        for job_id in job_ids:
            if job_id in finished:
                continue
            status = httpx2.get(
                f"{api.base_url}/api/v1/import/files/status",
                params={"id": job_id},
                headers=api.headers,
                timeout=30,
            ).json()
            if status["finished"]:
                finished[job_id] = status
        assert time.monotonic() < deadline, f"{len(finished)} of {len(job_ids)} jobs finished in {timeout} s"
        time.sleep(0.1)
    return finished


def test_two_workers_share_the_jobs_and_every_file_gets_exactly_one_result(
    tmp_path: Path,
    postgres_url: str,
    s3_bucket: S3Bucket,
    origin: tuple[str, dict[str, bytes]],
    httpserver: HTTPServer,
) -> None:
    base_url, contents = origin
    hooks: list[Request] = []

    def receive(request: Request) -> Response:
        hooks.append(request)
        return Response("ok")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(receive)
    storage_url = s3_bucket.fresh_url()
    shared = {
        "FILEIMPORT_DATABASE_URL": postgres_url,
        "FILEIMPORT_STORAGE_URL": storage_url,
        "FILEIMPORT_STORAGE_OPTIONS": json.dumps(s3_bucket.options),
        "FILEIMPORT_WORKER_POLL_SECONDS": "0.2",
        # Claims of 4 files: the bulk job is 50 claims, too many for one worker to take all.
        "FILEIMPORT_WORKER_CONCURRENCY": "8",
        "FILEIMPORT_LOG_JSON": "true",
    }
    api_env = service_env(tmp_path / "api", **shared, FILEIMPORT_NO_WORKER="true")
    token = prepare(api_env)
    workers = [
        WorkerProcess(
            service_env(tmp_path / f"worker-{n}", **shared, FILEIMPORT_LOG_LEVEL="INFO"),
            tmp_path / f"worker-{n}.log",
        )
        for n in (1, 2)
    ]
    try:
        owners = [worker.wait_started() for worker in workers]
        with serve_process(api_env, token) as api:
            bulk_ids = [f"bulk-{i:03d}.png" for i in range(BULK_FILES)]
            sync_ids = [
                [f"shared-{(7 * job + i) % SHARED_KEYS:02d}.png" for i in range(SYNC_JOB_FILES)]
                for job in range(SYNC_JOBS)
            ]

            def batch(system_name: str, ids: list[str]) -> dict[str, Any]:
                return {
                    "systemName": system_name,
                    "webhook": httpserver.url_for("/hook"),
                    "files": [
                        {"url": f"{base_url}/{i}", "id": i, "fileName": i, "metadata": {}} for i in ids
                    ],
                }

            started = time.monotonic()
            bulk_job = post_job(api, batch("bulk", bulk_ids))
            sync_jobs = [post_job(api, batch("sync", ids)) for ids in sync_ids]
            statuses = wait_finished(api, [bulk_job, *sync_jobs], JOB_TIMEOUT)
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 15
            while len(hooks) < 1 + SYNC_JOBS and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # a duplicate delivery would arrive by now
    finally:
        for worker in workers:
            worker.stop()

    # Every file exactly one result, in batch order, none failed.
    bulk = statuses[bulk_job]
    assert bulk["state"] == "success"
    assert [r["externalId"] for r in bulk["files"]] == bulk_ids
    assert {r["status"] for r in bulk["files"]} == {"success"}
    assert len({r["mediaId"] for r in bulk["files"]}) == BULK_FILES
    successes: Counter[str] = Counter()
    media_ids: defaultdict[str, set[str]] = defaultdict(set)
    for job_id, ids in zip(sync_jobs, sync_ids, strict=True):
        status = statuses[job_id]
        assert status["state"] == "success"
        assert [r["externalId"] for r in status["files"]] == ids
        for result in status["files"]:
            assert result["status"] in {"success", "skipped"}, result
            successes[result["externalId"]] += result["status"] == "success"
            media_ids[result["externalId"]].add(result["mediaId"])
    # Racing jobs created each shared key once; every other import of it was skipped.
    assert set(successes.values()) == {1}
    assert all(len(ids) == 1 for ids in media_ids.values())

    # One entry per key with the origin's bytes; one lease per file, all released.
    with psycopg.connect(libpq(postgres_url)) as conn:
        entries = conn.execute(
            "SELECT system_name, external_id, sha256, version FROM media_entries"
        ).fetchall()
        leases = conn.execute(
            "SELECT leases, lease_owner, lease_expires_at, count(*) FROM import_files"
            " GROUP BY leases, lease_owner, lease_expires_at"
        ).fetchall()
        pending = conn.execute("SELECT count(*) FROM import_files WHERE status = 'pending'").fetchone()
    keys = Counter((system, external_id) for system, external_id, _, _ in entries)
    assert keys.most_common(1)[0][1] == 1
    assert len(entries) == BULK_FILES + len({i for ids in sync_ids for i in ids})
    for _, external_id, sha256, version in entries:
        assert sha256 == hashlib.sha256(contents[external_id]).hexdigest()
        assert version == 1
    assert leases == [(1, None, None, BULK_FILES + SYNC_JOBS * SYNC_JOB_FILES)]
    assert pending == (0,)

    # Both workers imported files of the bulk job, none twice; nothing went wrong.
    imported = [
        [
            e["external_id"]
            for e in w.events()
            if e["event"] == "import.file.imported" and e["job_id"] == bulk_job
        ]
        for w in workers
    ]
    assert sorted(imported[0] + imported[1]) == bulk_ids
    assert imported[0], f"worker {owners[0]} imported no file of the bulk job"
    assert imported[1], f"worker {owners[1]} imported no file of the bulk job"
    for worker in workers:
        events = worker.events()
        assert [e for e in events if e["event"] == "import.file.already_recorded"] == []
        assert [e for e in events if e.get("level") in {"error", "critical"}] == []

    # Exactly one webhook per job.
    assert sorted(json.loads(h.get_data())["id"] for h in hooks) == sorted([bulk_job, *sync_jobs])

    # The bytes are in the bucket, once per distinct content; no process kept a local copy.
    stored = asyncio.run(stored_keys(storage_url, s3_bucket.options))
    assert stored == {blob_key(sha256) for _, _, sha256, _ in entries}
    for folder in ("api", "worker-1", "worker-2"):
        assert [p for p in (tmp_path / folder).rglob("*") if p.is_file()] == [], folder
    assert elapsed < JOB_TIMEOUT
