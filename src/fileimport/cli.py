"""The ``fileimport`` command line: serve, worker, migrate, projects and tokens.

Every option can also be set by the environment variable its help names;
service settings come from ``FILEIMPORT_*`` variables (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import structlog
import typer
import yaml
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession

from fileimport.auth.service import (
    KNOWN_SCOPES,
    SCOPE_READ,
    SCOPE_WRITE,
    create_token,
    list_tokens,
    revoke_token,
)
from fileimport.core.dispatch import Topic
from fileimport.core.errors import validation_details
from fileimport.core.logging import configure_logging
from fileimport.core.processes import pid_prefix, remove_folders_of_dead_processes
from fileimport.core.settings import MIN_SAFE_BLOB_AGE, Settings, get_settings
from fileimport.projects.config import ProjectConfig
from fileimport.projects.service import ProjectExistsError, create_project, describe_project, get_project

app = typer.Typer(
    help="Asynchronous file import service with a media library.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold tokens and database passwords
)
project_app = typer.Typer(help="Create and show projects.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(token_app, name="token")
err = Console(stderr=True)
log = structlog.get_logger(__name__)


def _settings(*, storage: bool = False) -> Settings:
    """The settings, or exit 2 naming what is wrong. With ``storage``, the blob store they name
    is opened once too (nothing is dialled), so that a bad ``FILEIMPORT_STORAGE_OPTIONS`` value or
    an ``s3://`` URL without a bucket stops the command before it starts, in one line."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        problems = _validation_text(exc, name=lambda path: f"FILEIMPORT_{path.upper()}")
        err.print(f"[red]invalid settings:[/red] {escape(problems)}", soft_wrap=True)
        raise typer.Exit(2) from None
    if storage:
        from fileimport.core.storage import open_storage

        try:
            open_storage(settings.resolved_storage_url, settings.storage_options)
        except ValueError as exc:
            err.print(f"[red]invalid storage settings:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
    return settings


T = TypeVar("T")


def _require_migrated_sqlite(settings: Settings) -> None:
    """Exit 1 with the hint to migrate when the embedded SQLite database has no file yet.

    Checked before connecting: SQLite would otherwise create an empty file
    (``gc`` then ran against it and "deleted 0 blobs"), and a failed connect
    left aiosqlite's thread printing "Event loop is closed" tracebacks.
    """
    url = make_url(settings.resolved_database_url)
    plain_file = url.database not in (None, "", ":memory:") and url.query.get("uri") != "true"
    if url.get_backend_name() == "sqlite" and plain_file and not Path(str(url.database)).is_file():
        _database_failed(settings.resolved_database_url, "unable to open database file")


def _data_dir_ready(settings: Settings) -> None:
    """Create ``FILEIMPORT_DATA_DIR`` if needed, or exit 2 with one line saying why it cannot be."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(
            f"[red]cannot create FILEIMPORT_DATA_DIR {escape(str(settings.data_dir))}:[/red] "
            f"{escape(exc.strerror or str(exc))}",
            soft_wrap=True,
        )
        raise typer.Exit(2) from None


def _run_in_transaction(settings: Settings, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``action`` in one committed database transaction, from synchronous CLI code."""
    from fileimport.core.db import Database

    _require_migrated_sqlite(settings)

    async def main() -> T:
        db = Database(settings.resolved_database_url)
        try:
            async with db.transaction() as session:
                return await action(session)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except (OperationalError, ProgrammingError) as exc:
        _database_failed(settings.resolved_database_url, exc)


def _database_failed(url: str, problem: BaseException | str) -> NoReturn:
    """Exit 1 with one line naming the database (password hidden) and ``problem`` (an error, of
    which the first line is shown, or a sentence), plus a hint to migrate when a table is
    missing; no traceback."""
    cause = problem.orig if isinstance(problem, DBAPIError) and problem.orig else problem
    reason = (
        cause if isinstance(cause, str) else (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    )
    # No tables yet, or (embedded SQLite) no data folder yet: never migrated.
    never_migrated = any(s in reason for s in ("no such table", "unable to open database file")) or (
        type(cause).__name__ == "UndefinedTable"
    )
    hint = (
        "\nRun 'fileimport migrate' first, with the same FILEIMPORT_DATA_DIR / FILEIMPORT_DATABASE_URL."
        if never_migrated
        else ""
    )
    err.print(
        f"[red]cannot use the database at {escape(_redact(url))}:[/red] {escape(reason)}{hint}",
        soft_wrap=True,
    )
    raise typer.Exit(1) from None


DATABASE_CHECK_SECONDS = 10.0


def _require_database(settings: Settings) -> None:
    """Exit 1, with one line on stderr naming the database (password hidden), unless it answers.

    For production mode: an orchestrator should see a start that failed, not
    a process that is never ready. ``SELECT 1`` must answer within
    `DATABASE_CHECK_SECONDS`.
    """
    from sqlalchemy import text

    from fileimport.core.db import create_engine

    url = settings.resolved_database_url

    async def main() -> None:
        engine = create_engine(url)
        try:
            with anyio.fail_after(DATABASE_CHECK_SECONDS):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        anyio.run(main)
    except TimeoutError:
        _database_failed(url, f"no answer within {DATABASE_CHECK_SECONDS:g} seconds")
    except (DBAPIError, OSError) as exc:
        _database_failed(url, exc)


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar="FILEIMPORT_HOST", help="Interface to bind (FILEIMPORT_HOST).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, envvar="FILEIMPORT_PORT", help="Port (FILEIMPORT_PORT).")
    ] = 8000,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            envvar="FILEIMPORT_NO_WORKER",
            help="No worker in this process: it serves the API only; worker processes "
            "asked for with --worker-processes still run (FILEIMPORT_NO_WORKER).",
        ),
    ] = False,
    worker_processes: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            envvar="FILEIMPORT_WORKER_PROCESSES",
            help="Worker processes to run beside this one, stopped with it; one per spare core "
            "lets a job use them all (FILEIMPORT_WORKER_PROCESSES).",
        ),
    ] = 0,
) -> None:
    """Serve the API and, unless --no-worker, an in-process worker (plus --worker-processes more)."""
    settings = _settings(storage=True)
    configure_logging(settings.log_level, json=settings.log_json)
    if settings.mode == "production":
        _require_database(settings)  # the embedded mode starts anyway; /readyz says what is missing
    # Before the app (and so prometheus_client) is imported; after the checks
    # above, whose exits would leave the folder behind.
    metrics_dir = _share_metrics_with_children() if worker_processes else None
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under
    # the handler it found; the default one would end the process there, before
    # `finally` stops the worker processes and removes the metrics folder.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        import uvicorn

        from fileimport.app import create_app

        workers = WorkerProcesses(worker_processes)
        try:
            uvicorn.run(
                create_app(settings, run_worker=not no_worker, wake_children=workers.wake),
                host=host,
                port=port,
                log_level=settings.log_level.lower(),
                access_log=False,
                log_config=None,  # configure_logging has routed uvicorn's loggers already
                timeout_graceful_shutdown=10,
            )
        finally:
            workers.stop()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _exit_cleanly(signum: int, frame: object) -> NoReturn:
    """A SIGTERM handler: leave through ``SystemExit(0)``, running ``finally`` blocks on the way."""
    raise SystemExit(0)


def _share_metrics_with_children() -> Path | None:
    """Turn on prometheus_client's multiprocess mode for ``serve`` and the worker processes it
    starts (which inherit ``PROMETHEUS_MULTIPROC_DIR``), so that ``/metrics`` counts what they
    import too: each process writes its metrics to files in a fresh folder, removed at exit.

    Must run before ``prometheus_client`` is imported. None when the variable was set
    already: the operator's folder is used, and kept.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    # One folder per serve, named by its pid: those of a serve that was killed
    # (SIGKILL runs no cleanup) are removed by the next one.
    parent = Path(tempfile.gettempdir()) / "fileimport-metrics"
    parent.mkdir(exist_ok=True)
    remove_folders_of_dead_processes(parent, pid_prefix)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


WAKE_SIGNAL = signal.SIGUSR1
"""Sent by ``serve`` to its worker processes when a job comes in."""


class WorkerProcesses:
    """``count`` ``fileimport worker`` children of ``serve``, each started again when it dies.

    A worker that dies (killed, out of memory, a crash in a decoder) leaves its
    leases to expire and is replaced, so the capacity ``serve`` was started
    with does not drain away. One that dies within ``QUICK_EXIT`` seconds of
    starting is restarted after a pause that doubles up to ``MAX_PAUSE``
    seconds, so a worker that cannot start does not spin.
    """

    QUICK_EXIT = 10.0
    MAX_PAUSE = 60.0

    def __init__(self, count: int) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.children = [_start_worker_process() for _ in range(count)]
        self._started = [time.monotonic()] * count
        self._pause = [1.0] * count
        self._watcher = threading.Thread(target=self._watch, name="worker-processes", daemon=True)
        if count:
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            try:
                self._replace_dead()
            except Exception:  # a failed start is retried on the next round
                log.exception("worker.process.start_failed")

    def _replace_dead(self) -> None:
        for slot, child in enumerate(self.children):
            if child.poll() is None:
                continue
            lived = time.monotonic() - self._started[slot]
            pause = self._pause[slot] if lived < self.QUICK_EXIT else 1.0
            log.warning("worker.process.exited", pid=child.pid, returncode=child.returncode, restart_in=pause)
            if self._stopping.wait(pause):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.children[slot] = _start_worker_process()
            self._started[slot] = time.monotonic()
            self._pause[slot] = min(pause * 2, self.MAX_PAUSE)
            log.info("worker.process.started", pid=self.children[slot].pid)

    def wake(self, topic: Topic) -> None:
        """Tell each worker process that a job came in (``SIGUSR1``), so that it claims files now
        instead of at its next poll. Other topics are this process's own work."""
        if topic is not Topic.IMPORTS:
            return
        for child in list(self.children):
            # Popen.send_signal sends nothing to a child already reaped, whose pid may be reused.
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(WAKE_SIGNAL)

    def stop(self) -> None:
        """Stop replacing workers, then stop them all (see `_stop_processes`)."""
        with self._lock:
            self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join(5)
        _stop_processes(self.children)


def _start_worker_process() -> subprocess.Popen[bytes]:
    """``fileimport worker`` as a child with this process's environment.

    On Linux the child gets SIGTERM if this process dies, even by SIGKILL
    (``PR_SET_PDEATHSIG``, prctl(2)), so no worker outlives its ``serve``
    (strictly: the thread that started it, the main thread or the watcher of
    `WorkerProcesses`, which both live as long as ``serve`` runs).
    """
    return subprocess.Popen(
        [sys.executable, "-m", "fileimport", "worker"], preexec_fn=partial(_die_with_parent, os.getpid())
    )


def _die_with_parent(parent_pid: int) -> None:
    # Ignored until the worker listens for it (ignoring survives exec): a job
    # posted while the child is still starting must not kill it.
    signal.signal(WAKE_SIGNAL, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent_pid:
            # The parent died between fork and prctl: no signal will come.
            os._exit(1)


def _stop_processes(children: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM each child (a worker hands its leases back), then wait; SIGKILL after ``timeout`` seconds."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@app.command()
def worker() -> None:
    """Run a worker only: import jobs and webhook deliveries from the shared database."""
    from fileimport.core.runtime import open_runtime
    from fileimport.worker import Worker

    settings = _settings(storage=True)
    configure_logging(settings.log_level, json=settings.log_json)
    # serve's own worker processes (multiprocess mode) are counted by serve's /metrics.
    if settings.worker_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        except OSError as exc:
            err.print(
                f"[red]cannot serve metrics on {escape(settings.worker_metrics_host)}:"
                f"{settings.worker_metrics_port}:[/red] {escape(exc.strerror or str(exc))}",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    async def main() -> None:
        runtime = open_runtime(settings)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(Worker(runtime).run)
                # SIGTERM (what process managers send) stops the worker cleanly:
                # running jobs are cancelled and their leases released at once.
                # WAKE_SIGNAL: serve, whose child this is, took a new job.
                try:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, WAKE_SIGNAL) as signals:
                        async for signum in signals:
                            if signum == WAKE_SIGNAL:
                                runtime.dispatcher.wake(Topic.IMPORTS)
                                continue
                            tg.cancel_scope.cancel()
                            break
                finally:
                    # Leaving the receiver restores the default action, which for the
                    # wake signal is to die: ignored again for the rest of the shutdown
                    # (handing leases back), since serve may still send it.
                    signal.signal(WAKE_SIGNAL, signal.SIG_IGN)
        finally:
            await runtime.close()

    anyio.run(main, backend_options={"use_uvloop": True})


@app.command()
def gc(
    older_than: Annotated[
        str, typer.Option(help="Keep unreferenced blobs written less than this long ago (e.g. 1h, 30m).")
    ] = "1h",
    no_imports_running: Annotated[
        bool,
        typer.Option(
            "--no-imports-running",
            help="Allow --older-than under 10m: only safe when no import runs anywhere.",
        ),
    ] = False,
) -> None:
    """Delete stored blobs that no media entry references (workers also do this hourly)."""
    from fileimport.core.runtime import open_runtime
    from fileimport.media.repository import count_references
    from fileimport.media.tasks import delete_unreferenced_blobs

    settings = _settings(storage=True)
    configure_logging(settings.log_level, json=settings.log_json)  # log lines to stderr, not into the summary
    min_age = parse_duration(older_than, "--older-than")
    if min_age < MIN_SAFE_BLOB_AGE and not no_imports_running:
        err.print(
            f"[red]--older-than {older_than} could delete the blob of an import in progress;[/red] "
            "use at least 10m, or add --no-imports-running when no import runs anywhere"
        )
        raise typer.Exit(2)

    async def main() -> int:
        runtime = open_runtime(settings)
        try:
            # The sweep's own query on no keys: a database never migrated fails here,
            # before a blob is touched, even when there are no blobs to ask about.
            await runtime.db.run_read(partial(count_references, asset_keys=[]))
            return await delete_unreferenced_blobs(runtime, min_age)
        finally:
            await runtime.close()

    _require_migrated_sqlite(settings)
    try:
        deleted = anyio.run(main)
    except (OperationalError, ProgrammingError) as exc:  # PostgreSQL never migrated, or away
        _database_failed(settings.resolved_database_url, exc)
    print(f"deleted {deleted} unreferenced blob(s)")  # the command's result: stdout, for `gc > report`


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema to the newest migration."""
    from alembic import command

    from fileimport.core.schema import migrations_config

    settings = _settings()
    _data_dir_ready(settings)
    try:
        command.upgrade(migrations_config(settings.resolved_database_url), "head")
    except (DBAPIError, OSError) as exc:
        _database_failed(settings.resolved_database_url, exc)
    err.print(f"database migrated: {_redact(settings.resolved_database_url)}")


def _redact(url: str) -> str:
    """``url`` with its password, in the user info or a ``password`` query parameter (libpq), as ``***``."""
    url = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def _validation_text(exc: ValidationError, *, name: Callable[[str], str] = str) -> str:
    """A pydantic error as ``field: problem; field: problem`` (one line, no links to pydantic's
    docs). Left out: the "should have at least N items" that pydantic adds at a tuple whose
    items failed (it counts what was left after validation), not a problem of its own."""
    errors = list(exc.errors())
    locs = [tuple(error["loc"]) for error in errors]
    kept = [
        error
        for error in errors
        if error["type"] != "too_short"
        or not any(
            len(loc) > len(error["loc"]) and loc[: len(error["loc"])] == tuple(error["loc"]) for loc in locs
        )
    ]
    details = validation_details(kept)
    return "; ".join(
        f"{name(path)}: {problem}" if path != "body" else problem for path, problem in details.items()
    )


def _load_config(path: Path) -> ProjectConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
        return ProjectConfig.for_new_project({} if data is None else data)  # an empty file: the defaults
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        err.print(f"[red]cannot read {escape(str(path))}:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        err.print(
            f"[red]invalid configuration in {escape(str(path))}:[/red] {escape(_validation_text(exc))}",
            soft_wrap=True,
        )
        raise typer.Exit(2) from None


@project_app.command("create")
def project_create(
    name: Annotated[str, typer.Argument(help="Project name.")],
    config: Annotated[Path | None, typer.Option(help="Media type configuration, YAML or JSON.")] = None,
) -> None:
    """Create a project (default media types unless --config)."""
    if not name.strip() or name != name.strip() or not name.isprintable():
        err.print(
            f"[red]invalid project name {name!r}:[/red] use printable characters, "
            "without leading or trailing spaces"
        )
        raise typer.Exit(2)
    settings = _settings()
    project_config = _load_config(config) if config else None

    async def action(session: AsyncSession) -> dict[str, object]:
        project = await create_project(session, name, project_config)
        return describe_project(project)

    try:
        described = _run_in_transaction(settings, action)
    except ProjectExistsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    print(json.dumps(described, indent=2))


def _no_such_project(name: str) -> NoReturn:
    """Say so on stderr, with how to create it, and exit 1."""
    err.print(f"[red]no project '{name}'[/red]; create it with: fileimport project create {name}")
    raise typer.Exit(1)


@project_app.command("show")
def project_show(name: Annotated[str, typer.Argument(help="Project name.")]) -> None:
    """Print the project as JSON, with its webhook signing secret as webhookSecret."""
    settings = _settings()

    async def action(session: AsyncSession) -> dict[str, object] | None:
        project = await get_project(session, name)
        return describe_project(project) if project else None

    described = _run_in_transaction(settings, action)
    if described is None:
        _no_such_project(name)
    print(json.dumps(described, indent=2))


MAX_DURATION = timedelta(days=36525)
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str, option: str | None = None) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``90s``, ``2w``, or an ISO 8601 duration (``PT1H``, ``P30D``, as
    the ``FILEIMPORT_*`` duration settings take) → timedelta; raises typer.BadParameter naming
    ``option`` (``--expires-in``) when given."""
    text = value.strip()
    match = _DURATION.match(text)
    if text.startswith("-"):
        raise typer.BadParameter(
            f"{value} is negative; give a positive duration such as 30d", param_hint=option
        )
    if match:
        try:
            duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            duration = MAX_DURATION + MAX_DURATION
    elif text[:1] in ("P", "p"):
        try:
            duration = TypeAdapter(timedelta).validate_python(text)
        except ValidationError:
            raise typer.BadParameter(
                f"{value} is not an ISO 8601 duration such as PT1H or P30D", param_hint=option
            ) from None
    else:
        raise typer.BadParameter(
            f"{value!r}: use a number and a unit: 90s, 45m, 12h, 30d, 2w, or ISO 8601: PT1H",
            param_hint=option,
        )
    if duration > MAX_DURATION:
        raise typer.BadParameter(f"{value} is too long; at most 100 years", param_hint=option)
    return duration


@token_app.command("create")
def token_create(
    project: Annotated[str, typer.Option(help="Project name.", envvar="FILEIMPORT_PROJECT")],
    scope: Annotated[list[str], typer.Option(help=f"Scope, repeatable: {', '.join(KNOWN_SCOPES)}.")],
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 30d or 12h; without it the token does not expire.")
    ] = None,
    label: Annotated[str, typer.Option(help="A note on what the token is for.")] = "",
) -> None:
    """Create a token and print only the token on stdout."""
    settings = _settings()
    lifetime = parse_duration(expires_in, "--expires-in") if expires_in else None
    if lifetime is not None and lifetime <= timedelta(0):
        raise typer.BadParameter("a token must live longer than 0s", param_hint="--expires-in")

    async def action(session: AsyncSession) -> str | None:
        found = await get_project(session, project)
        if found is None:
            return None
        return await create_token(session, found, scope, expires_in=lifetime, label=label)

    try:
        token = _run_in_transaction(settings, action)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if token is None:
        _no_such_project(project)
    print(token)


@token_app.command("list")
def token_list(
    project: Annotated[str, typer.Option(help="Project name.", envvar="FILEIMPORT_PROJECT")],
) -> None:
    """Print the project's tokens as JSON lines: number, label, scopes, created, expires (no secrets)."""
    settings = _settings()

    async def action(session: AsyncSession) -> list[dict[str, Any]] | None:
        found = await get_project(session, project)
        if found is None:
            return None
        return [
            {
                "number": t.id,
                "label": t.label,
                "scopes": t.scopes,
                "createdAt": t.created_at.isoformat(),
                "expiresAt": t.expires_at.isoformat() if t.expires_at else None,
            }
            for t in await list_tokens(session, found)
        ]

    tokens = _run_in_transaction(settings, action)
    if tokens is None:
        _no_such_project(project)
    for token in tokens:
        print(json.dumps(token))


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str, typer.Argument(help="The token's number (token list) or the token itself.")],
    project: Annotated[str, typer.Option(help="Project name.", envvar="FILEIMPORT_PROJECT")],
) -> None:
    """Delete a token: requests with it answer 401 from now on."""
    settings = _settings()

    async def action(session: AsyncSession) -> bool | None:
        found = await get_project(session, project)
        if found is None:
            return None
        return await revoke_token(session, found, token.strip()) is not None

    revoked = _run_in_transaction(settings, action)
    if revoked is None:
        _no_such_project(project)
    if not revoked:
        err.print(
            f"[red]project '{project}' has no such token[/red]; see: fileimport token list --project {project}"
        )
        raise typer.Exit(1)
    err.print("[green]revoked[/green]")


@app.command()
def bootstrap(
    project: Annotated[str, typer.Option(help="Project to create if missing.")] = "default",
) -> None:
    """Development setup: create the project and a dev token once, and say how to use them."""
    settings = _settings()
    token_file = settings.data_dir / "dev-token"

    async def action(session: AsyncSession) -> str | None:
        found = await get_project(session, project)
        if found is None:
            found = await create_project(session, project)
        if token_file.exists():
            return None
        return await create_token(session, found, [SCOPE_WRITE, SCOPE_READ], label="dev")

    token = _run_in_transaction(settings, action)
    if token is not None:
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        err.print(f"[green]created project '{project}' and a dev token[/green] (saved in {token_file})")
    token = token or token_file.read_text().strip()
    public = settings.public_url.rstrip("/")
    sys.stderr.write(
        "\n"
        f"  Dev token:  {token}   (also in {token_file})\n"
        f"  API docs:   {public}/docs\n"
        "  Try it:     python3 -m http.server 9000 -b 127.0.0.1 -d examples/files &   # a loopback origin\n"
        f"              curl -s -X POST {public}/api/v1/import/files -H 'Authorization: Bearer {token}' "
        '-H \'Content-Type: application/json\' -d \'{"systemName": "demo", "files": [{"url": '
        '"http://127.0.0.1:9000/FreshFlower.jpg", "id": "flower-1", "fileName": "flower", '
        '"metadata": {}}]}\'\n'
        f"              curl -s -H 'Authorization: Bearer {token}' '{public}/api/v1/import/files/status?id=<job id>'\n\n"
    )
