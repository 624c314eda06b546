"""Task dispatch: how committed work reaches a worker.

Work is durable in the database before it is dispatched (a job row in state
``started``, a webhook delivery row in state ``pending``); dispatching only
wakes a worker sooner than its next poll. The in-process dispatcher wakes the
worker running in the same process; a distributed dispatcher would defer a
task on the shared queue in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol


class Topic(StrEnum):
    IMPORTS = "imports"
    WEBHOOKS = "webhooks"


class Dispatcher(Protocol):
    """Wakes workers for a topic after the work was committed."""

    def wake(self, topic: Topic) -> None:
        """Signal that committed work for ``topic`` is waiting (to this process's worker)."""

    def wake_all(self, topic: Topic) -> None:
        """`wake`, and wake the worker processes this process started too (new work for all)."""

    async def wait(self, topic: Topic, seconds: float) -> bool:
        """Return when woken for ``topic`` (True) or after ``seconds`` (False), whichever is first."""


class InProcessDispatcher:
    """Wakes the worker loops of this process through one asyncio.Event per topic.

    ``wake_children`` (``serve --worker-processes``: signals its worker
    processes) is called by `wake_all`; workers elsewhere find new work at
    their next poll (``FILEIMPORT_WORKER_POLL_SECONDS``).
    """

    def __init__(self, wake_children: Callable[[Topic], None] | None = None) -> None:
        self._events = {topic: asyncio.Event() for topic in Topic}
        self._wake_children = wake_children

    def wake(self, topic: Topic) -> None:
        self._events[topic].set()

    def wake_all(self, topic: Topic) -> None:
        self.wake(topic)
        if self._wake_children is not None:
            self._wake_children(topic)

    async def wait(self, topic: Topic, seconds: float) -> bool:
        """Return when woken for ``topic`` (True) or after ``seconds`` (False), whichever is first."""
        event = self._events[topic]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        woken = event.is_set()
        event.clear()
        return woken
