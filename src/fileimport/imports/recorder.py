"""Recording files' final results with group commit.

Each file's result and its media library change are written in the same
transaction, so a file is either finished with its entry in place or still
pending (SPEC.md: nothing half done after a crash). Committing one
transaction per file made the database the bottleneck (bench case (a):
SQLite's write lock queued every file behind the others), so results that
are ready at the same time share one transaction: while one batch is being
written, the next ones queue, and the next transaction takes all of them
(up to ``max_batch``). A caller's ``record_*`` returns only once its result
is committed. A job whose last pending file gets its result in a batch
finishes in that batch's transaction (`fileimport.imports.completion`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import structlog
from sqlalchemy.orm import Session

from fileimport.core.db import Database, utcnow
from fileimport.core.dispatch import Dispatcher
from fileimport.imports import repository
from fileimport.imports.completion import FinishedJob, announce_finished, finish_jobs_if_done
from fileimport.imports.states import FileStatus
from fileimport.media.service import EntryImport, UpsertAction, upsert_entries, upsert_entry

log = structlog.get_logger(__name__)

REASON_ALREADY_EXISTS = "already exists"
REASON_SUPERSEDED = (
    "a job posted later already imported this file; this older one changes nothing "
    "(post it again to make it the newest)"
)
SKIP_REASONS = {UpsertAction.UNCHANGED: REASON_ALREADY_EXISTS, UpsertAction.SUPERSEDED: REASON_SUPERSEDED}
"""The reason of a ``skipped`` result, by what its import did to the entry."""


class ResultAlreadyRecorded(Exception):
    """Another worker gave this file its final result first (after a lease expired)."""


@dataclass(frozen=True)
class RecordedResult:
    status: FileStatus
    media_id: str | None


@dataclass
class _Item:
    job_id: str
    project_id: int
    file_id: int
    attempts: int
    entry_import: EntryImport | None = None
    code: str | None = None
    reason: str | None = None
    done: asyncio.Future[RecordedResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ResultRecorder:
    """Writes file results in shared transactions; use as an async context manager.

    ``dispatcher`` is woken for webhook deliveries when a batch finishes a job.
    """

    def __init__(self, db: Database, dispatcher: Dispatcher | None = None, *, max_batch: int = 200) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None  # noqa: S101 - entered
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def record_import(
        self, job_id: str, project_id: int, file_id: int, entry_import: EntryImport, attempts: int
    ) -> RecordedResult:
        """Apply the entry change and give the file ``success`` (or ``skipped`` when nothing changed).

        Raises ResultAlreadyRecorded when the file already had a result.
        """
        return await self._submit(_Item(job_id, project_id, file_id, attempts, entry_import=entry_import))

    async def record_failure(
        self, job_id: str, project_id: int, file_id: int, code: str, reason: str, attempts: int
    ) -> RecordedResult:
        """Give the file ``failed`` with ``code`` and ``reason``; raises ResultAlreadyRecorded."""
        return await self._submit(_Item(job_id, project_id, file_id, attempts, code=code, reason=reason))

    async def _submit(self, item: _Item) -> RecordedResult:
        if self._task_group is None:
            raise RuntimeError("ResultRecorder used outside 'async with'")
        self._queue.put_nowait(item)
        return await item.done

    async def _run(self) -> None:
        """Write the queued results until cancelled; no error of a batch ends it (each caller
        gets its own), or every later result of the worker would wait for ever."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:
                # One item's fault (or a key created concurrently by another
                # worker) must not fail the others: write them one by one.
                log.info("import.results.batch_retried", size=len(batch), error=type(exc).__name__)
                for item in batch:
                    await self._write_alone(item)

    async def _write_alone(self, item: _Item) -> None:
        try:
            await self._write([item], alone=True)
        except Exception as exc:
            # The caller may be gone (cancelled with its claim, when a sibling
            # file failed on the same fault): its future is then settled.
            if not item.done.done():
                item.done.set_exception(exc)

    async def _write(self, batch: list[_Item], *, alone: bool = False) -> None:
        """Write ``batch`` in one transaction (in a worker thread), then settle each caller's future."""
        resolved, finished = await self._db.run_in_transaction(
            lambda session: _write_batch(session, batch, alone=alone)
        )
        announce_finished(finished, self._dispatcher)
        for item, result in resolved:
            if item.done.done():
                continue
            if result is None:
                item.done.set_exception(ResultAlreadyRecorded(item.file_id))
            else:
                item.done.set_result(result)


def _write_batch(
    session: Session, batch: list[_Item], *, alone: bool
) -> tuple[list[tuple[_Item, RecordedResult | None]], list[FinishedJob]]:
    """The statements of one batch (sync, in `Database.run_in_transaction`): each item's result,
    None for one that another worker finished first, and the jobs the batch finished. ``alone``
    (one item) uses ``upsert_entry``, which resolves a key created concurrently by another
    worker itself."""
    now = utcnow()
    resolved: list[tuple[_Item, RecordedResult | None]] = []
    pending = repository.lock_pending_files(session, [i.file_id for i in batch])
    live = [i for i in batch if i.file_id in pending]
    resolved.extend((i, None) for i in batch if i.file_id not in pending)
    by_project: dict[int, list[_Item]] = defaultdict(list)
    for item in live:
        if item.entry_import is not None:
            by_project[item.project_id].append(item)
    rows: list[dict[str, Any]] = []
    for project_id, items in by_project.items():
        imports = [i.entry_import for i in items if i.entry_import]
        if alone:
            (only,) = imports
            outcomes = [upsert_entry(session, project_id, only)]
        else:
            outcomes = upsert_entries(session, project_id, imports)
        for item, outcome in zip(items, outcomes, strict=True):
            reason = SKIP_REASONS.get(outcome.action)
            status = FileStatus.SKIPPED if reason else FileStatus.SUCCESS
            rows.append(_row(item, status, outcome.media_id, None, reason, now))
            resolved.append((item, RecordedResult(status, outcome.media_id)))
    for item in live:
        if item.entry_import is None:
            rows.append(_row(item, FileStatus.FAILED, None, item.code, item.reason, now))
            resolved.append((item, RecordedResult(FileStatus.FAILED, None)))
    repository.record_file_results(session, rows)
    finished = finish_jobs_if_done(session, {i.job_id for i in live})
    return resolved, finished


def _row(
    item: _Item, status: FileStatus, media_id: str | None, code: str | None, reason: str | None, now: Any
) -> dict[str, Any]:
    return {
        "id": item.file_id,
        "status": status,
        "media_id": media_id,
        "code": code,
        "reason": reason,
        "attempts": item.attempts,
        "finished_at": now,
    }
