"""The long-lived parts a process shares: settings, database, storage, dispatcher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fileimport.core.db import Database
from fileimport.core.dispatch import Dispatcher, InProcessDispatcher, Topic
from fileimport.core.settings import Settings
from fileimport.core.storage import BlobStorage, open_storage


@dataclass
class Runtime:
    """Built once per process by ``open_runtime``; closed with ``close``."""

    settings: Settings
    db: Database
    storage: BlobStorage
    dispatcher: Dispatcher

    async def close(self) -> None:
        try:
            await self.storage.close()
        finally:
            await self.db.dispose()


def open_runtime(settings: Settings, wake_children: Callable[[Topic], None] | None = None) -> Runtime:
    """Connect to the configured database and storage (lazily: nothing is dialled yet).

    ``wake_children`` is how the dispatcher wakes worker processes this one started.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    return Runtime(
        settings=settings,
        db=Database(settings.resolved_database_url),
        storage=open_storage(settings.resolved_storage_url, settings.storage_options),
        dispatcher=InProcessDispatcher(wake_children),
    )
