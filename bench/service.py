"""The service under test, run as a real ``fileimport serve`` process, and its databases."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from bench.origin import free_port
from bench.webhook import Arrival, WebhookError, WebhookReceiver

FILEIMPORT = [sys.executable, "-m", "fileimport"]
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class ServiceError(Exception):
    """The service did not start, or a job did not finish."""


@dataclass(frozen=True)
class Backend:
    """One column of the table: a database (and the local folder for blobs)."""

    key: str
    label: str
    database_url: str | None = None


def service_env(
    data_dir: Path,
    concurrency: int,
    database_url: str | None,
    source: Path | None = None,
    *,
    worker_processes: int = 0,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every ``fileimport`` command the bench runs; no inherited FILEIMPORT_*.

    ``source`` is a folder holding a ``fileimport`` package to run instead of
    the installed (editable) one, e.g. one commit's ``src`` from ``git archive``.
    ``worker_processes`` more workers run beside ``serve``'s own; ``concurrency``
    is split between them, so the service as a whole downloads at most
    ``concurrency`` files at once, like curl. ``extra`` (``--service-env``)
    comes last and overrides the bench's own values.
    """
    per_process = max(1, concurrency // (worker_processes + 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEIMPORT_")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH", "")) if p)
    env.update(
        FILEIMPORT_DATA_DIR=str(data_dir),
        FILEIMPORT_FETCH_ALLOWED_NETWORKS="127.0.0.0/8",
        FILEIMPORT_LOG_LEVEL="WARNING",
        FILEIMPORT_WORKER_CONCURRENCY=str(per_process),
        FILEIMPORT_FETCH_PER_ORIGIN_CONCURRENCY=str(per_process),
        FILEIMPORT_WORKER_PROCESSES=str(worker_processes),
    )
    if database_url:
        env["FILEIMPORT_DATABASE_URL"] = database_url
    env.update(extra or {})
    return env


def cli(env: Mapping[str, str], *args: str) -> str:
    done = subprocess.run(
        [*FILEIMPORT, *args], env=dict(env), capture_output=True, text=True, timeout=180, check=False
    )
    if done.returncode != 0:
        raise ServiceError(f"fileimport {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def prepare(env: Mapping[str, str]) -> str:
    """Migrate, create project ``default``, return a token with both scopes."""
    cli(env, "migrate")
    cli(env, "project", "create", "default")
    return cli(
        env,
        "token",
        "create",
        "--project",
        "default",
        "--scope",
        "public-api:write",
        "--scope",
        "public-api:read",
    ).strip()


def webhook_secret(env: Mapping[str, str]) -> str:
    """Project ``default``'s webhook signing secret (``whsec_...``), from ``fileimport project show``."""
    secret = json.loads(cli(env, "project", "show", "default")).get("webhookSecret")
    if not isinstance(secret, str) or not secret:
        raise ServiceError("fileimport project show default printed no webhookSecret")
    return secret


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ... (proc(5), fields 3 on)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``serve`` and the worker processes it started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds so far of ``pid`` and its descendants (all threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for member in process_tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


@dataclass(frozen=True)
class MachineSnapshot:
    """Machine-wide CPU counters, to tell a quiet run from one competing with other work."""

    at: float
    busy_jiffies: int
    pressure_us: int | None

    @classmethod
    def take(cls) -> MachineSnapshot:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        pressure = None
        try:
            some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
            pressure = int(some.rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            pass
        return cls(time.monotonic(), sum(fields[:8]) - idle, pressure)

    def since(self, earlier: MachineSnapshot) -> dict[str, float | None]:
        """``busy_cores``: cores busy on average (every process); ``cpu_pressure``: share of the
        time some runnable task waited for a CPU (Linux PSI), None where PSI is missing."""
        seconds = max(self.at - earlier.at, 1e-9)
        busy = (self.busy_jiffies - earlier.busy_jiffies) / os.sysconf("SC_CLK_TCK") / seconds
        pressure = None
        if self.pressure_us is not None and earlier.pressure_us is not None:
            pressure = (self.pressure_us - earlier.pressure_us) / 1e6 / seconds
        return {"busy_cores": busy, "cpu_pressure": pressure}


def load_average() -> float:
    """The machine's 1-minute load average: other work on the machine makes every figure noisier."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` line of /proc/PID/status (``VmHWM``, ``VmRSS``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ServiceError(f"no {field} in /proc/{pid}/status")


@dataclass
class Service:
    """A running ``fileimport serve``; ``client`` keeps one connection alive."""

    process: subprocess.Popen[bytes]
    base_url: str
    token: str
    client: httpx2.Client

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def post_job(self, body: bytes) -> httpx2.Response:
        return self.client.post(
            f"{self.base_url}/api/v1/import/files",
            content=body,
            headers={"Content-Type": "application/json"},
        )

    def status(self, job_id: str) -> httpx2.Response:
        return self.client.get(f"{self.base_url}/api/v1/import/files/status", params={"id": job_id})


@contextmanager
def serve(env: Mapping[str, str], token: str, log_path: Path, *, worker: bool = True) -> Iterator[Service]:
    """``fileimport serve [--no-worker]`` on a free port until the block exits (SIGTERM, then SIGKILL)."""
    port = free_port()
    args = [*FILEIMPORT, "serve", "--port", str(port)] + ([] if worker else ["--no-worker"])
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    client = httpx2.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120, trust_env=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServiceError(f"fileimport serve exited with {process.returncode}:\n{tail}")
            try:
                if client.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError("fileimport serve was not ready within 60 s")
            time.sleep(0.05)
        _await_worker_processes(process.pid, int(env.get("FILEIMPORT_WORKER_PROCESSES") or 0), deadline)
        yield Service(process, base_url, token, client)
    finally:
        client.close()
        stop_process(process, signal.SIGTERM, 20)


def _await_worker_processes(pid: int, count: int, deadline: float) -> None:
    """Wait until ``serve`` (``pid``) has its ``count`` worker processes and they are done starting.

    ``/readyz`` answers before the worker processes have imported their code
    (about a second of CPU each): a job posted then is the in-process worker's
    alone. A started worker idles between polls, so once the children's CPU
    time grows by less than 20 ms in 0.25 s twice in a row, they are taken as started.
    """
    if count == 0:
        return
    quiet, last = 0, None
    while quiet < 2:
        if time.monotonic() > deadline:
            raise ServiceError(
                f"the {count} worker process(es) of fileimport serve did not start within 60 s"
            )
        children = process_tree(pid)[1:]
        if len(children) >= count:
            used = sum(sum(cpu_times(child)) for child in children)
            quiet = quiet + 1 if last is not None and used - last < 0.02 else 0
            last = used
        time.sleep(0.25)


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` and wait up to ``timeout`` seconds for the exit; SIGKILL after that."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class JobRun:
    """One import job, timed by the client from sending the POST to the first finished status."""

    job_id: str
    seconds: float
    server_seconds: float | None
    cpu_user_seconds: float
    cpu_system_seconds: float
    load_before: float
    machine: dict[str, float | None]
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    completion: str = "poll"
    # Status GETs the bench made from the POST to the end (the polls, or the one after the webhook).
    status_gets: int = 0
    # From the POST to the webhook's arrival (webhook mode), and the delivery's state in the final status.
    webhook_seconds: float | None = None
    webhook_state: str | None = None

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_seconds + self.cpu_system_seconds

    @property
    def ok(self) -> bool:
        return not self.failures


# While waiting for a webhook, a status GET this often tells a failed delivery
# from a long job (jobs shorter than this get none).
WEBHOOK_CHECK_SECONDS = 10.0


def run_job(
    service: Service,
    body: bytes,
    *,
    poll: float,
    timeout: float,
    receiver: WebhookReceiver | None = None,
) -> JobRun:
    """POST ``body`` and time it until the service's status says the job is finished.

    Without ``receiver``, the status is polled every ``poll`` seconds. With one,
    the job gets a ``webhook`` URL on it; the bench waits for the signed webhook
    of the job, then makes one status GET, which must say finished. Either way
    the clock runs from the POST to the status that says finished, and the
    service's CPU time and the machine's counters are taken around the same interval.
    """
    webhook_url = None
    if receiver is not None:
        webhook_url = receiver.new_url()
        body = json.dumps({**json.loads(body), "webhook": webhook_url}).encode()
    load_before = load_average()
    user_before, system_before = cpu_times(service.pid)
    machine_before = MachineSnapshot.take()
    started = time.perf_counter()
    response = service.post_job(body)
    if response.status_code != 200:
        raise ServiceError(f"POST answered {response.status_code}: {response.text[:500]}")
    job_id = response.json()["id"]
    deadline = started + timeout
    gets = 0
    webhook_seconds = None

    def get_status() -> dict[str, Any]:
        nonlocal gets
        gets += 1
        status = service.status(job_id)
        if status.status_code != 200:
            raise ServiceError(f"status answered {status.status_code}: {status.text[:500]}")
        document: dict[str, Any] = status.json()
        return document

    if receiver is None:
        while True:
            document = get_status()
            if document["finished"]:
                break
            if time.perf_counter() > deadline:
                raise ServiceError(
                    f"job {job_id} not finished after {timeout:.0f} s: {document.get('progress')}"
                )
            time.sleep(poll)
    else:
        assert webhook_url is not None
        arrival = _await_webhook(receiver, job_id, deadline, timeout, get_status)
        if arrival.error:
            raise ServiceError(f"job {job_id}: {arrival.error}")
        if not webhook_url.endswith(arrival.path):
            raise ServiceError(f"the webhook of job {job_id} came to {arrival.path}, not to {webhook_url}")
        webhook_seconds = arrival.at - started
        document = get_status()
        if not document["finished"]:
            raise ServiceError(
                f"job {job_id}: the webhook came, but the status GET after it says not finished: "
                f"state {document.get('state')}, progress {document.get('progress')}"
            )
    seconds = time.perf_counter() - started
    user, system = cpu_times(service.pid)
    machine = MachineSnapshot.take().since(machine_before)
    files = document.get("files") or []
    counts: dict[str, int] = {}
    for f in files:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    failures = [
        {"externalId": f["externalId"], "code": f.get("code"), "reason": f.get("reason")}
        for f in files
        if f["status"] == "failed"
    ]
    if document["state"] != "success":
        failures.append({"job": job_id, "state": document["state"], "reason": document.get("reason")})
    return JobRun(
        job_id,
        seconds,
        _server_seconds(document),
        user - user_before,
        system - system_before,
        load_before,
        machine,
        counts,
        failures,
        completion="poll" if receiver is None else "webhook",
        status_gets=gets,
        webhook_seconds=webhook_seconds,
        webhook_state=(document.get("webhook") or {}).get("state") if receiver is not None else None,
    )


def _await_webhook(
    receiver: WebhookReceiver,
    job_id: str,
    deadline: float,
    timeout: float,
    get_status: Callable[[], dict[str, Any]],
) -> Arrival:
    """The arrival of ``job_id``'s webhook; raises when it failed, was refused, or did not come in time."""
    while True:
        remaining = deadline - time.perf_counter()
        try:
            arrival = receiver.wait(job_id, max(0.0, min(remaining, WEBHOOK_CHECK_SECONDS)))
        except WebhookError as exc:
            raise ServiceError(str(exc)) from exc
        if arrival is not None:
            return arrival
        # No webhook yet: a long job, or a delivery that failed (or waits for a retry).
        document = get_status()
        hook = document.get("webhook") or {}
        if document["finished"] and (hook.get("state") == "failed" or hook.get("lastError")):
            raise ServiceError(f"job {job_id} finished, but its webhook was not delivered: {hook}")
        if time.perf_counter() >= deadline:
            raise ServiceError(
                f"no webhook for job {job_id} after {timeout:.0f} s: finished {document['finished']}, "
                f"progress {document.get('progress')}, webhook {hook or 'none in the status'}"
            )


def _server_seconds(document: dict[str, Any]) -> float | None:
    from datetime import datetime

    try:
        started = datetime.fromisoformat(document["startedAt"])
        finished = datetime.fromisoformat(document["finishedAt"])
    except (KeyError, TypeError, ValueError):
        return None
    return (finished - started).total_seconds()


_DB_NAME = re.compile(r"^[a-z0-9_]+$")


def postgres_available(admin_url: str) -> str | None:
    """None when PostgreSQL answers at ``admin_url``, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(admin_url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {admin_url} is not reachable: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database for one bench run; yields its SQLAlchemy URL, drops it afterwards."""
    import psycopg
    from psycopg import sql

    name = f"fileimport_bench_{secrets.token_hex(4)}"
    assert _DB_NAME.match(name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    try:
        yield f"postgresql+psycopg://{user}{password}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
