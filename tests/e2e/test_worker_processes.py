"""``fileimport serve --worker-processes N``: more worker processes share one job and stop with serve."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from tests.support.images import png_bytes
from tests.support.origin import serve_directory
from tests.support.process import prepare, serve_process, service_env

pytestmark = pytest.mark.slow

FILES = 120


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, started from any of its threads (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Serve:
    """A running ``fileimport serve --worker-processes 1``, once its ``workers`` (its own and
    the worker process's, or only the latter with ``--no-worker``) have started, with its JSON
    log (both processes write it) in ``log_path``."""

    def __init__(
        self, process: subprocess.Popen[bytes], base_url: str, log_path: Path, *, workers: int = 2
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path
        wait_until(lambda: len(children(self.process.pid)) == 1, 30, "no worker process started")
        self.worker_pid = children(self.process.pid)[0]
        wait_until(lambda: len(self.owners("worker.started")) == workers, 30, "the workers should start")

    def events(self) -> list[dict[str, object]]:
        return [
            json.loads(line)
            for line in self.log_path.read_text(errors="replace").splitlines()
            if line.startswith("{")
        ]

    def owners(self, event: str) -> set[str]:
        return {str(e["owner"]) for e in self.events() if e["event"] == event}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if alive(self.worker_pid):
            os.kill(self.worker_pid, signal.SIGKILL)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Serve, str, str]]:
    root = tmp_path / "origin"
    root.mkdir()
    for i in range(FILES):
        (root / f"{i:03d}.png").write_bytes(png_bytes(8 + i % 5, 8, noise=True, seed=i))
    env = service_env(tmp_path / "var", FILEIMPORT_LOG_JSON="true", FILEIMPORT_LOG_LEVEL="DEBUG")
    env["FILEIMPORT_WORKER_CONCURRENCY"] = "4"
    token = prepare(env)
    # A little latency per file, so that the job outlasts the idle worker's poll.
    log_path = tmp_path / "serve.log"
    with (
        serve_directory(root, delay=0.02) as origin,
        serve_process(env, token, args=["--worker-processes", "1"], log_path=log_path) as service,
    ):
        serve = Serve(service.process, service.base_url, log_path)
        try:
            yield serve, token, origin
        finally:
            serve.close()


def test_worker_processes_share_one_job_and_stop_with_serve(served: tuple[Serve, str, str]) -> None:
    serve, token, origin = served
    headers = {"Authorization": f"Bearer {token}"}
    files = [{"url": f"{origin}/{i:03d}.png", "id": f"f{i}", "fileName": f"f{i}"} for i in range(FILES)]
    response = httpx2.post(
        f"{serve.base_url}/api/v1/import/files",
        json={"systemName": "s", "files": files},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]

    def finished() -> bool:
        status = httpx2.get(
            f"{serve.base_url}/api/v1/import/files/status", params={"id": job_id}, headers=headers
        ).json()
        return bool(status["finished"])

    wait_until(finished, 60, "the job did not finish within 60 s")
    status = httpx2.get(
        f"{serve.base_url}/api/v1/import/files/status", params={"id": job_id}, headers=headers
    ).json()
    assert [f["status"] for f in status["files"]] == ["success"] * FILES
    # Both processes leased files of this one job.
    leased = {str(e["owner"]) for e in serve.events() if e["event"] == "import.files.leased"}
    assert leased == serve.owners("worker.started")

    # SIGTERM to serve stops its worker process too, leases handed back, and
    # each process removes its own spool and part-file folders.
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(20) == 0
    wait_until(lambda: not alive(serve.worker_pid), 20, "the worker process outlived serve")
    data_dir = serve.log_path.parent / "var"
    assert list((data_dir / "spool").iterdir()) == []
    assert list((data_dir / "blobs" / ".parts").iterdir()) == []


def test_a_killed_serve_takes_its_worker_processes_with_it(served: tuple[Serve, str, str]) -> None:
    serve, _, _ = served
    serve.process.kill()  # SIGKILL: serve cannot stop its children itself
    serve.process.wait()
    try:
        wait_until(lambda: not alive(serve.worker_pid), 20, "the worker process outlived a killed serve")
    except AssertionError as exc:  # seen once in CI: say what the worker was doing
        tail = "\n".join(serve.log_path.read_text(errors="replace").splitlines()[-15:])
        state = Path(f"/proc/{serve.worker_pid}/status").read_text()[:300] if alive(serve.worker_pid) else ""
        raise AssertionError(f"{exc}\nlog tail:\n{tail}\nworker status:\n{state}") from None


def test_a_worker_process_that_dies_is_replaced(served: tuple[Serve, str, str]) -> None:
    serve, _, _ = served
    first = serve.worker_pid
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: [pid for pid in children(serve.process.pid) if pid != first and alive(pid)],
        20,
        "serve did not start a new worker process",
    )
    (replacement,) = [pid for pid in children(serve.process.pid) if pid != first and alive(pid)]
    serve.worker_pid = replacement
    wait_until(lambda: len(serve.owners("worker.started")) == 3, 30, "the new worker should start")
    exits = [e for e in serve.events() if e["event"] == "worker.process.exited"]
    assert [(e["pid"], e["returncode"]) for e in exits] == [(first, -signal.SIGKILL)]


@contextmanager
def worker_process_only(tmp_path: Path, files: int, **env_vars: str) -> Iterator[tuple[Serve, str, str]]:
    """``serve --no-worker --worker-processes 1`` (its one worker is the child) and an origin
    serving ``files`` small PNGs named ``0.png``, ``1.png``, ...; yields (serve, token, origin)."""
    root = tmp_path / "origin"
    root.mkdir()
    for i in range(files):
        (root / f"{i}.png").write_bytes(png_bytes(8 + i, 8))
    env = service_env(tmp_path / "var", FILEIMPORT_LOG_JSON="true", FILEIMPORT_LOG_LEVEL="INFO", **env_vars)
    token = prepare(env)
    log_path = tmp_path / "serve.log"
    args = ["--no-worker", "--worker-processes", "1"]
    with serve_directory(root) as origin, serve_process(env, token, args=args, log_path=log_path) as service:
        serve = Serve(service.process, service.base_url, log_path, workers=1)
        try:
            yield serve, token, origin
        finally:
            serve.close()


def import_and_wait(serve: Serve, token: str, files: list[dict[str, str]], timeout: float) -> None:
    """POST one job of ``files`` and wait until its status says finished (AssertionError after ``timeout`` s)."""
    headers = {"Authorization": f"Bearer {token}"}
    job_id = httpx2.post(
        f"{serve.base_url}/api/v1/import/files",
        json={"systemName": "s", "files": files},
        headers=headers,
        timeout=30,
    ).json()["id"]

    def finished() -> bool:
        status = httpx2.get(
            f"{serve.base_url}/api/v1/import/files/status", params={"id": job_id}, headers=headers
        ).json()
        return bool(status["finished"])

    wait_until(finished, timeout, f"job {job_id} did not finish within {timeout:g} s")


def test_a_new_job_wakes_the_worker_processes_at_once(tmp_path: Path) -> None:
    """serve without its own worker and with a poll of 60 s: only the wake signal it sends its
    worker process can start the job within seconds."""
    with worker_process_only(tmp_path, 1, FILEIMPORT_WORKER_POLL_SECONDS="60") as (serve, token, origin):
        for round_ in range(2):  # the second job finds the worker idle in its long wait
            import_and_wait(
                serve, token, [{"url": f"{origin}/0.png", "id": f"a{round_}", "fileName": "a"}], 20
            )


def test_metrics_count_what_the_worker_processes_import(tmp_path: Path) -> None:
    """serve has no worker of its own here: every file is a worker process's, and its /metrics
    must still count them (prometheus_client's multiprocess mode)."""
    with worker_process_only(tmp_path, 3) as (serve, token, origin):
        import_and_wait(
            serve, token, [{"url": f"{origin}/{i}.png", "id": f"m{i}", "fileName": "m"} for i in range(3)], 30
        )
        metrics = httpx2.get(f"{serve.base_url}/metrics").text
        environ = Path(f"/proc/{serve.worker_pid}/environ").read_bytes().split(b"\0")
        (shared,) = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
        assert Path(shared.decode()).is_dir()
        serve.process.send_signal(signal.SIGTERM)
        serve.process.wait(20)
    assert re.search(r'^fileimport_files_total\{code="",status="success"\} 3\.0$', metrics, re.MULTILINE), (
        metrics
    )
    assert re.search(r'^fileimport_jobs_finished_total\{state="success"\} 1\.0$', metrics, re.MULTILINE)
    assert not Path(shared.decode()).exists()  # removed when serve stopped


def test_a_job_posted_while_the_worker_holds_all_it_may_starts_when_room_frees(tmp_path: Path) -> None:
    """A busy worker that took every free file and holds as many as it may when a job comes in
    cannot claim at the wake-up; it must claim once a claim of its own ends, not at its next
    poll (60 s here)."""
    root = tmp_path / "origin"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.png").write_bytes(png_bytes(8 + i, 8))
    env = service_env(
        tmp_path / "var",
        FILEIMPORT_WORKER_POLL_SECONDS="60",
        FILEIMPORT_WORKER_CONCURRENCY="1",  # claims of 4 files, 8 held at most
        FILEIMPORT_FETCH_PER_ORIGIN_CONCURRENCY="1",
    )
    token = prepare(env)
    headers = {"Authorization": f"Bearer {token}"}
    with serve_directory(root, delay=0.4) as origin, serve_process(env, token) as service:

        def post(prefix: str, count: int) -> str:
            files = [
                {"url": f"{origin}/{i}.png", "id": f"{prefix}{i}", "fileName": f"{i}.png"}
                for i in range(count)
            ]
            answer = httpx2.post(
                f"{service.base_url}/api/v1/import/files",
                json={"systemName": "s", "files": files},
                headers=headers,
                timeout=30,
            )
            job_id: str = answer.json()["id"]
            return job_id

        def finished(job_id: str) -> bool:
            status = httpx2.get(
                f"{service.base_url}/api/v1/import/files/status", params={"id": job_id}, headers=headers
            ).json()
            return bool(status["finished"])

        first = post("a", 5)
        time.sleep(0.5)  # claimed at once: 4, then the last 1; nothing free, 5 held (4 more do not fit)
        second = post("b", 2)
        wait_until(lambda: finished(first), 20, "the first job should finish")
        wait_until(lambda: finished(second), 20, "the second job waited for the worker's poll")
