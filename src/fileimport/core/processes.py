"""Whether a process of this host still runs, for cleaning up after killed ones."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def process_alive(pid: int) -> bool:
    """True when a process with ``pid`` runs on this host (signal 0, kill(2)), not a zombie.

    A process of another user counts as alive (``EPERM``). A killed process
    that its parent has not waited for yet (a zombie, state ``Z`` in
    ``/proc/<pid>/stat``, proc(5)) still answers signal 0 but does nothing:
    it counts as dead, so that a service restarted at once after ``kill -9``
    cleans up after it. Used to tell the leftovers of a killed process (spool
    folders, blobs a sweep had set aside) from the work of one still running.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # no /proc (not Linux), or it ended meanwhile: signal 0 said it ran
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
    state = stat.rpartition(b")")[2].split(maxsplit=1)[:1]
    return state != [b"Z"]


def pid_prefix(name: str) -> int | None:
    """The pid a ``<pid>-<anything>`` folder name starts with; None for other names."""
    pid = name.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_folders_of_dead_processes(root: Path, pid_of: Callable[[str], int | None]) -> int:
    """Delete the folders under ``root`` whose owner process no longer runs; returns files removed.

    ``pid_of`` maps a folder's name to the pid of this host's process that
    owns it, or None for a folder that is not such a one (left alone).
    """
    if not root.is_dir():
        return 0
    removed = 0
    for folder in root.iterdir():
        pid = pid_of(folder.name)
        if pid is None or not folder.is_dir() or process_alive(pid):
            continue
        removed += sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
    return removed
