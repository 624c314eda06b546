"""Telling a killed worker's leftovers from a running one's (spool folders, set-aside blobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fileimport.core.processes import pid_prefix, process_alive, remove_folders_of_dead_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombies are read from /proc")


def spool_folder(root: Path, pid: int) -> Path:
    folder = root / f"{pid}-abcd"
    folder.mkdir(parents=True)
    (folder / "fetch-1.part").write_bytes(b"x" * 10)
    return folder


def test_a_killed_process_its_parent_has_not_waited_for_is_dead(tmp_path: Path) -> None:
    """After ``kill -9`` and a restart within seconds, the old pid may still be a zombie: its
    spool folder must go now, not at the restart after next (fresh-user trial: 351 MB left)."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        running = spool_folder(tmp_path, os.getpid())
        killed = spool_folder(tmp_path, child.pid)
        assert process_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_bytes().rpartition(b")")[2].split()[0] != b"Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.01)

        assert not process_alive(child.pid)  # a zombie: not waited for yet
        assert remove_folders_of_dead_processes(tmp_path, pid_prefix) == 1
        assert not killed.exists()
        assert running.exists()  # this process runs
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)  # reaped: gone
