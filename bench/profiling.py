"""Profile case (a) on the running service with py-spy, and say where the time goes.

py-spy attaches to the real ``fileimport serve`` process (no code change) while
it imports the 1000 icons, twice:

1. wall clock: every thread, idle ones too, with native frames (50 Hz). Each
   sample of each thread is classified by what the thread was doing (asleep
   in SQLite's busy handler, executing SQL, fsync, waiting in epoll, ...): the
   shares say what the import slots wait for.
2. the interpreter: only the thread holding the GIL (200 Hz). The share of
   time the GIL was held says how CPU-bound the process is, and the samples,
   grouped by pipeline stage and by library, say what that CPU is spent on.

Each job is slower under the profiler than without it; the shares, not the
seconds, are the result. Text goes to ``profile-a-<backend>.txt``, the raw
stacks (collapsed, for any flame graph tool) beside it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.cases import Settings, completion_receiver, completion_text, empty_blob_store
from bench.service import Service, prepare, run_job, serve, service_env, stop_process
from bench.webhook import WebhookReceiver

WALL_RATE = 50
GIL_RATE = 200
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (label, substrings of which one must be on the stack); first match wins, so
# the more specific come first.
CONNECTION_THREAD_STATES = [
    (
        "asleep in SQLite's busy handler (BEGIN IMMEDIATE waiting for the write lock)",
        ["sqlite3InvokeBusyHandler"],
    ),
    (
        "executing SQL (sqlite3_step / prepare)",
        ["sqlite3_step", "sqlite3_prepare", "_pysqlite_query_execute"],
    ),
    ("idle: no statement queued", ["_queue_SimpleQueue_get", "Queue.get"]),
]
WORKER_THREAD_STATES = [
    ("fsync of a stored blob or its folder", ["_fsync_path"]),
    ("rename into the blob store", ["_move_file"]),
    ("Pillow / mutagen probe", ["probe_file"]),
    ("spool file write", ["BufferedWriter.write", "FileIO.write", "OriginFetcher._receive"]),
    ("spool file create (mkstemp)", ["mkstemp", "_create_spool_file"]),
    ("idle: waiting for work", ["Condition.wait", "Queue.get"]),
]
EVENT_LOOP_STATES = [
    ("idle: waiting in epoll", ["epoll_pwait", "epoll_wait"]),
]
STAGES = [
    ("job finish (finish_jobs_if_done, in a claim's or the recorder's transaction)", ["finish_jobs_if_done"]),
    (
        "record results (the recorder's batch transactions, in a worker thread)",
        ["_write_batch", "ResultRecorder"],
    ),
    ("claim files (in a worker thread)", ["claim_files", "Worker._claim"]),
    ("per file: MIME sniffing (libmagic, on the event loop)", ["sniff_mime_type"]),
    ("per file: probe (Pillow/mutagen, worker thread)", ["probe_file"]),
    ("per file: store the blob (exists + put_file)", ["FileImporter._store"]),
    ("per file: fetch (aiohttp, spool write, SHA-256)", ["OriginFetcher.fetch"]),
    ("per file: other pipeline code", ["FileImporter.import_file"]),
    ("claim start (import_claimed_files)", ["import_claimed_files"]),
    (
        "API requests (the bench's status GETs; auth, routing, JSON)",
        ["RequestResponseCycle", "import_status", "ServerErrorMiddleware"],
    ),
    (
        "worker loops (claims, leases, webhooks)",
        ["Worker._import_loop", "Worker._lease_loop", "Worker._webhook_loop"],
    ),
    ("aiosqlite connection thread (Python side)", ["_connection_worker_thread"]),
    # SQLAlchemy's async layer runs its sync code in a greenlet, and py-spy
    # shows that stack without the coroutine that awaits it.
    (
        "SQLAlchemy sync code in a greenlet, caller not visible",
        ["sqlalchemy/"],
    ),
    ("event loop and callbacks (uvloop, asyncio, anyio glue)", ["Runner.run"]),
]
LIBRARIES = [
    ("SQLAlchemy (ORM, Core, compile, result)", ["sqlalchemy/"]),
    ("aiosqlite / sqlite3", ["aiosqlite/", "sqlite3/"]),
    ("greenlet (SQLAlchemy async bridge)", ["greenlet"]),
    ("aiohttp / yarl (fetching)", ["aiohttp/", "yarl/", "multidict/", "aiohappyeyeballs/"]),
    ("anyio", ["anyio/"]),
    ("asyncio / uvloop", ["asyncio/", "uvloop/"]),
    ("uvicorn / starlette / FastAPI", ["uvicorn/", "starlette/", "fastapi/"]),
    ("pydantic", ["pydantic"]),
    ("structlog / logging", ["structlog/", "logging/"]),
    ("libmagic (python-magic)", ["magic/"]),
    ("Pillow / mutagen", ["PIL/", "mutagen/"]),
    ("obstore", ["obstore"]),
    ("json", ["json/"]),
    ("fileimport's own code", ["fileimport/"]),
    ("threading / queue", ["threading.py", "queue.py"]),
]


def find_py_spy() -> str | None:
    """py-spy beside this Python, on PATH, or pip-installed into this venv (not a project dependency)."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found:
        return found
    print("py-spy is missing: pip install py-spy (into this venv only)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False)
    return str(beside) if beside.exists() else None


def profile_case(
    case: str,
    what: str,
    make_body: Callable[[str], bytes],
    warmup_body: bytes,
    settings: Settings,
    results_dir: Path,
    backend: str = "sqlite",
    database_url: str | None = None,
) -> dict[str, Any]:
    """Run one case's job under py-spy (wall clock, then GIL); write raw stacks and a text summary.

    ``make_body(tag)`` gives the job's POST body with a system name containing ``tag``.
    """
    py_spy = find_py_spy()
    if py_spy is None:
        print("profile SKIPPED: py-spy is not available", flush=True)
        return {"skipped": "py-spy is not available"}
    results_dir.mkdir(parents=True, exist_ok=True)
    data_dir = settings.workdir / f"profile-{case}-data"
    env = service_env(
        data_dir,
        settings.concurrency,
        database_url,
        settings.source,
        worker_processes=settings.worker_processes,
        extra=settings.service_env,
    )
    token = prepare(env)
    report: dict[str, Any] = {"completion": settings.completion}
    sections = []
    with (
        completion_receiver(settings, env) as receiver,
        serve(env, token, settings.workdir / f"profile-{case}-service.log") as service,
    ):
        run_job(service, warmup_body, poll=settings.poll, timeout=300, receiver=receiver)
        empty_blob_store(data_dir)
        os.sync()
        plain = run_job(service, make_body("plain"), poll=settings.poll, timeout=1800, receiver=receiver)
        empty_blob_store(data_dir)
        report["job_seconds_without_profiler"] = plain.seconds
        report["job_cpu_seconds_without_profiler"] = plain.cpu_seconds
        for name, flags, rate in (
            ("wall", ["--native", "--idle"], WALL_RATE),
            ("gil", ["--gil"], GIL_RATE),
        ):
            raw = results_dir / f"profile-{case}-{backend}-{name}.collapsed"
            os.sync()
            seconds, failed = _record(py_spy, service, flags, rate, raw, make_body(name), settings, receiver)
            empty_blob_store(data_dir)
            stacks = parse(raw.read_text()) if raw.exists() else []
            report[name] = {
                "job_seconds": seconds,
                "failed": failed,
                "samples": sum(n for _, n in stacks),
                "raw": str(raw),
            }
            summary = wall_summary(stacks) if name == "wall" else gil_summary(stacks, rate, seconds)
            sections.append(
                f"== {name}: py-spy record {' '.join(flags)} --threads --rate {rate}; the job took {seconds:.2f} s "
                f"under it ({plain.seconds:.2f} s without), {failed} failed ==\n{summary}"
            )
    text = results_dir / f"profile-{case}-{backend}.txt"
    header = (
        f"Profile of case ({case}): {what}, `fileimport serve` ({backend} + local folder), "
        f"{settings.worker_processes} worker process(es) beside serve's own worker, concurrency "
        f"{settings.concurrency} in all (worker = per origin), origin nginx on 127.0.0.1; "
        f"completion: {completion_text(settings)}; src measured: {settings.measured}.\n"
        f"Without the profiler the job took {plain.seconds:.2f} s and the service used "
        f"{plain.cpu_seconds:.2f} s of CPU ({plain.cpu_seconds / plain.seconds:.0%} of one core).\n"
    )
    text.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    report["text"] = str(text)
    print(f"\nprofile: {text}", flush=True)
    print(text.read_text())
    return report


def _record(
    py_spy: str,
    service: Service,
    flags: list[str],
    rate: int,
    raw: Path,
    body: bytes,
    settings: Settings,
    receiver: WebhookReceiver | None,
) -> tuple[float, int]:
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(service.pid),
            "--rate",
            str(rate),
            "--threads",
            "--subprocesses",  # the worker processes serve started (--worker-processes)
            *flags,
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # let py-spy attach before the job starts
        job = run_job(service, body, poll=settings.poll, timeout=900, receiver=receiver)
    finally:
        stop_process(spy, signal.SIGINT, 60)  # SIGINT: py-spy writes its output, then exits
    return job.seconds, len(job.failures)


def parse(raw: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks (``[process PID:"cmd";]thread;root;...;leaf count``); the process frame
    that ``--subprocesses`` puts first is dropped, so every stack starts with its thread."""
    stacks = []
    for line in raw.splitlines():
        frames, _, count = line.strip().rpartition(" ")
        if frames:
            parts = frames.split(";")
            if parts[0].startswith("process "):
                parts = parts[1:]
            stacks.append((parts, int(count)))
    return stacks


def _short(frame: str) -> str:
    """``func (file)``, without the line number and the site-packages / src prefix."""
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def _classify(frames: Iterable[str], rules: list[tuple[str, list[str]]], default: str) -> str:
    text = ";".join(frames)
    for label, needles in rules:
        if any(n in text for n in needles):
            return label
    return default


def _thread_kind(first: str) -> str:
    if "MainThread" in first:
        return "event loop (main thread)"
    if "_connection_worker_thread" in first:
        return "aiosqlite connection threads"
    if "AnyIO worker thread" in first:
        return "anyio worker threads (to_thread)"
    return "other threads (obstore/tokio, ...)"


def _lines(counter: Counter[str], total: int, limit: int, indent: str = "  ") -> list[str]:
    return [f"{indent}{100 * n / total:5.1f}%  {label}" for label, n in counter.most_common(limit)]


def wall_summary(stacks: list[tuple[list[str], int]]) -> str:
    """Per kind of thread: what its samples were doing."""
    kinds: Counter[str] = Counter()
    states: dict[str, Counter[str]] = {}
    busy_main: Counter[str] = Counter()
    for frames, count in stacks:
        kind = _thread_kind(frames[0])
        kinds[kind] += count
        if kind.startswith("aiosqlite"):
            state = _classify(frames, CONNECTION_THREAD_STATES, "other")
        elif kind.startswith("anyio"):
            state = _classify(frames, WORKER_THREAD_STATES, "other")
        elif kind.startswith("event loop"):
            state = _classify(frames, EVENT_LOOP_STATES, "running (see the GIL profile for what)")
            if not state.startswith("idle"):
                busy_main[_classify(frames, STAGES, "other")] += count
        else:
            state = "any"
        states.setdefault(kind, Counter())[state] += count
    out = ["samples by kind of thread, and what each kind was doing (share of that kind's samples):"]
    for kind, total in kinds.most_common():
        out.append(f"  {kind}: {total} samples")
        out += _lines(states[kind], total, 10, "    ")
    main_total = kinds.get("event loop (main thread)", 0)
    if main_total:
        out.append("  event loop, busy samples by stage (share of all event-loop samples):")
        out += _lines(busy_main, main_total, 12, "    ")
    return "\n".join(out)


def gil_summary(stacks: list[tuple[list[str], int]], rate: int, seconds: float) -> str:
    """What the thread holding the GIL was doing: by stage, by library, by function."""
    total = sum(n for _, n in stacks)
    if not total:
        return "no samples"
    stages: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, count in stacks:
        threads[_thread_kind(frames[0])] += count
        python = [f for f in frames[1:] if FRAME.match(f)]
        stages[_classify(python, STAGES, "other")] += count
        leaf = python[-1] if python else ""
        libraries[_classify([leaf], LIBRARIES, "other (stdlib, C)")] += count
        names = [_short(f) for f in python]
        if names:
            own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    held = total / (rate * (seconds + 1.0))
    out = [
        f"{total} samples: the GIL was held about {held:.0%} of the wall time "
        f"({total} of ~{rate * (seconds + 1.0):.0f} possible samples, job + 1 s before it)",
        "",
        "by thread:",
        *_lines(threads, total, 6),
        "",
        "by pipeline stage (inclusive: the stage's frame anywhere on the stack):",
        *_lines(stages, total, 20),
        "",
        "by library of the frame on top of the stack (own time):",
        *_lines(libraries, total, 20),
        "",
        "functions, own time, top 25:",
        *_lines(own, total, 25),
        "",
        "functions, inclusive time, top 40 (fileimport and libraries; outer frames left out):",
        *_lines(
            Counter({k: v for k, v in inclusive.items() if not _is_outer(k)}),
            total,
            40,
        ),
    ]
    return "\n".join(out)


OUTER = (
    "typer/",
    "click/",
    "runpy",
    "uvicorn/main.py",
    "uvicorn/server.py",
    "uvicorn/_compat.py",
    "threading.py",
)


def _is_outer(name: str) -> bool:
    return any(o in name for o in OUTER) or name.startswith(
        ("<module>", "Runner.run", "TaskHandle._run_coro")
    )
