"""The service as a separate process, started with the ``fileimport`` command."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from tests.support.service import LOOPBACK, free_port

FILEIMPORT = [sys.executable, "-m", "fileimport"]


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEIMPORT_")}
    env.update(
        FILEIMPORT_DATA_DIR=str(data_dir),
        FILEIMPORT_FETCH_ALLOWED_NETWORKS=LOOPBACK,
        FILEIMPORT_FETCH_BLOCK_PUBLIC="true",
        FILEIMPORT_FETCH_BACKOFF_BASE="0.01",
        FILEIMPORT_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def cli(env: Mapping[str, str], *args: str) -> str:
    """Run ``fileimport ARGS``; returns stdout, raises on a non-zero exit."""
    done = subprocess.run(
        [*FILEIMPORT, *args], env=dict(env), capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"fileimport {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def peak_rss_bytes(self) -> int:
        """VmHWM of the process (Linux), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")


def prepare(env: Mapping[str, str]) -> str:
    """Migrate, create project 'default' and return a token with both scopes."""
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


@contextmanager
def serve_process(
    env: Mapping[str, str],
    token: str,
    port: int | None = None,
    *,
    args: Sequence[str] = (),
    log_path: Path | None = None,
) -> Iterator[ServiceProcess]:
    """``fileimport serve [ARGS]`` on a free port, ready (``/healthz`` answers); stopped (SIGTERM,
    then SIGKILL) on exit. With ``log_path`` its stderr (the service log) goes to that file."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("wb")) if log_path else None
        process = subprocess.Popen(
            [*FILEIMPORT, "serve", "--port", str(port), *args], env=dict(env), stderr=log
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"service exited with {process.returncode}")
                try:
                    if httpx2.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("service did not start within 30 s")
                time.sleep(0.1)
            yield ServiceProcess(process, base_url, token)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
