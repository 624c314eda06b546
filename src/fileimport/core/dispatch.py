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
from enum import StrEnum
from typing import Protocol


class Topic(StrEnum):
    IMPORTS = "imports"
    WEBHOOKS = "webhooks"


class Dispatcher(Protocol):
    """Wakes workers for a topic after the work was committed."""

    def wake(self, topic: Topic) -> None:
        """Signal that committed work for ``topic`` is waiting."""

    async def wait(self, topic: Topic, seconds: float) -> None:
        """Return when woken for ``topic`` or after ``seconds``, whichever is first."""


class InProcessDispatcher:
    """Wakes the worker loops of this process through one asyncio.Event per topic."""

    def __init__(self) -> None:
        self._events = {topic: asyncio.Event() for topic in Topic}

    def wake(self, topic: Topic) -> None:
        self._events[topic].set()

    async def wait(self, topic: Topic, seconds: float) -> None:
        """Return when woken for ``topic`` or after ``seconds``, whichever is first."""
        event = self._events[topic]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()
