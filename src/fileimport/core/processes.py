"""Whether a process of this host still runs, for cleaning up after killed ones."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (signal 0, kill(2)).

    A process of another user counts as alive (``EPERM``). Used to tell the
    leftovers of a killed process (spool folders, blobs a sweep had set aside)
    from the work of one still running.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
