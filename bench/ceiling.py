"""The ceiling: curl downloading the same URLs from the same origin to disk, at the same concurrency."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.service import MachineSnapshot


class CeilingError(Exception):
    """curl did not download every file."""


@dataclass(frozen=True)
class Download:
    seconds: float
    files: int
    bytes: int
    machine: dict[str, float | None]


def curl_version() -> str | None:
    if not shutil.which("curl"):
        return None
    first = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False).stdout
    return first.split("\n", 1)[0].split(" (", 1)[0].removeprefix("curl ").strip()


def curl_download(urls: list[str], dest: Path, *, parallel: int) -> Download:
    """Download ``urls`` with ``curl --parallel --parallel-max PARALLEL`` into ``dest``; timed, then deleted.

    The time is the curl process's wall time, start to exit (one process for
    all URLs, connections kept alive). Raises CeilingError when curl fails or
    a file is missing.
    """
    dest.mkdir(parents=True, exist_ok=True)
    config = dest.parent / f"{dest.name}.curlrc"
    with config.open("w") as out:
        for index, url in enumerate(urls):
            out.write(f'url = "{url}"\noutput = "{dest / str(index)}"\n')
    command = [
        "curl",
        "--parallel",
        "--parallel-max",
        str(parallel),
        "--fail",
        "--silent",
        "--show-error",
        "--config",
        str(config),
    ]
    try:
        before = MachineSnapshot.take()
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        seconds = time.perf_counter() - started
        machine = MachineSnapshot.take().since(before)
        if done.returncode != 0:
            raise CeilingError(f"curl exited {done.returncode}: {done.stderr.strip()[:500]}")
        sizes = [p.stat().st_size for p in dest.iterdir()]
        if len(sizes) != len(urls):
            raise CeilingError(f"curl wrote {len(sizes)} of {len(urls)} files")
        return Download(seconds=seconds, files=len(sizes), bytes=sum(sizes), machine=machine)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        config.unlink(missing_ok=True)
