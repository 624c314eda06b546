"""The worker: leases files to import and delivers webhooks until cancelled.

Files are leased in the database, a few at a time (``lease_owner``,
``lease_expires_at`` on each file), and the leases are renewed while they
run; a worker killed mid-import stops renewing, and once its leases have
expired any worker (the same service restarted, or another process) takes
those files. Several workers, in one or many processes and machines, share
one database and so one job: each claim takes the next files of the job
served least recently.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import aiohttp
import anyio
import structlog

from fileimport.core.address_guard import create_guarded_session, guard_from_settings
from fileimport.core.db import DATABASE_UNAVAILABLE, new_id, utcnow
from fileimport.core.dispatch import Topic
from fileimport.core.fetcher import OriginFetcher
from fileimport.core.probe import load_decoders
from fileimport.core.processes import pid_prefix, remove_folders_of_dead_processes
from fileimport.core.runtime import Runtime
from fileimport.core.schema import schema_problem
from fileimport.core.storage import StorageError
from fileimport.imports import repository
from fileimport.imports.completion import announce_finished, finish_stranded_jobs
from fileimport.imports.pipeline import FileImporter
from fileimport.imports.recorder import ResultRecorder
from fileimport.imports.tasks import ClaimedWork, claim_work, import_claimed_files
from fileimport.media.tasks import delete_unreferenced_blobs
from fileimport.webhooks.tasks import deliver_due_webhooks, seconds_until_next_delivery

log = structlog.get_logger(__name__)


class FailureBackoff:
    """Consecutive failures of one worker loop (the database or store is down, say).

    The first failure is logged with its traceback, later ones as one line
    each; after ``n`` failures in a row the loop waits ``usual * 2**n``
    seconds (see `wait`), at most ``max_wait``, instead of its usual pause, so an outage
    neither floods the log nor hammers the database. A success logs the
    recovery and resets the count.
    """

    def __init__(self, event: str, *, max_wait: float = 30.0) -> None:
        self.event = event
        self.max_wait = max_wait
        self.failures = 0

    def failed(self, error: BaseException | None = None) -> None:
        """Call from an ``except`` block: logs ``error``, by default the exception being handled
        (with its traceback the first time)."""
        self.failures += 1
        if self.failures == 1 and error is None:
            log.exception(self.event)
        else:
            error = error or sys.exc_info()[1]
            log.warning(self.event, failures=self.failures, error=f"{type(error).__name__}: {error}")

    def succeeded(self) -> None:
        if self.failures:
            log.info(f"{self.event}.recovered", failures=self.failures)
            self.failures = 0

    def wait(self, usual: float) -> float:
        """Seconds to pause: ``usual`` while all is well, longer after each failure in a row."""
        if not self.failures:
            return usual
        return min(usual * 2.0**self.failures, self.max_wait)


CLAIM_SIZE_PER_SLOT = 4
"""Files a worker leases per claim, per download slot (``FILEIMPORT_WORKER_CONCURRENCY``)."""


class Worker:
    """Runs import jobs and webhook deliveries for one process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.owner = f"{socket.gethostname()[:200]}:{os.getpid()}:{new_id(nbytes=4)}"
        concurrency = runtime.settings.worker_concurrency
        # Files per claim: large enough that claims stay a small share of the
        # work (each is a write transaction and a task group: 16-file claims
        # cost case (a) 1.77 ms of CPU per file, 64-file claims 1.45, when each
        # claim also read whether its job was done), small enough that workers
        # sharing a job end it together and that a killed worker's files wait
        # for their lease to expire in small numbers. A job smaller than a
        # claim is shared (`repository.claim_files`).
        self.claim_size = CLAIM_SIZE_PER_SLOT * concurrency
        # Files leased at once: the claim being imported (its files beyond the
        # `concurrency` download slots wait for one) and the next claim, so
        # that no download slot waits for a claim. What is leased and not
        # started is handed back on shutdown.
        self.max_held = 2 * self.claim_size
        # Each worker process spools into its own folder, so that a restarted
        # one can remove what a killed one left behind without touching the
        # downloads of others sharing the data folder.
        self.spool_dir = runtime.settings.spool_dir / f"{os.getpid()}-{new_id(nbytes=4)}"
        self.held: set[int] = set()
        # Set when a claim left files interrupted `file_max_leases` times, which
        # only a worker holding nothing may take (`repository.claim_files`):
        # no more claims until what is held is done. `alone`: importing one.
        self.draining = False
        self.alone = False
        self.suspect_job: str | None = None  # the job whose suspects this worker saw last
        # Whether the last claim may have left free files: only then does an
        # idle download slot call for another claim (`_on_slot_idle`). Without
        # it, each file ending at a job's tail was a write transaction finding
        # nothing (case (b) of the bench: 6 per 27-file job, each queueing for
        # SQLite's write lock ahead of the results being recorded).
        self.more_free = True
        self.claiming = False
        self.slot_idled = False  # while claiming: decided once the claim says `more_free`
        self.claims = FailureBackoff("worker.claim_failed")
        # The blob store refused a file (full, read-only, unreachable): claims
        # wait, doubling up to 30 s, until a claim is imported again.
        self.store = FailureBackoff("worker.store_failed")
        # The database failed while a claim was imported (its results could not be
        # written): claims wait the same way, until a claim is recorded again.
        self.database = FailureBackoff("worker.database_failed")

    async def run(self) -> None:
        """Work until cancelled."""
        settings = self.runtime.settings
        guard = guard_from_settings(settings)
        await self._wait_for_schema()
        await anyio.to_thread.run_sync(load_decoders)
        removed = await anyio.to_thread.run_sync(remove_abandoned_spool_dirs, settings.spool_dir)
        try:
            parts = await self.runtime.storage.remove_abandoned_parts()
        except StorageError:
            log.exception("worker.parts_cleanup_failed")  # the next sweep tries again
            parts = 0
        try:
            stranded = await self.runtime.db.run_in_transaction(finish_stranded_jobs)
        except Exception:
            log.exception("worker.stranded_jobs_failed")  # the next start tries again
            stranded = []
        announce_finished(stranded, self.runtime.dispatcher)
        log.info(
            "worker.started",
            owner=self.owner,
            abandoned_spool_files_removed=removed,
            abandoned_part_files_removed=parts,
            stranded_jobs_finished=len(stranded),
        )
        try:
            async with (
                OriginFetcher(settings, guard=guard, spool_dir=self.spool_dir) as fetcher,
                ResultRecorder(self.runtime.db, self.runtime.dispatcher) as recorder,
                create_guarded_session(guard, timeout_seconds=settings.webhook_timeout) as webhook_session,
                anyio.create_task_group() as tg,
            ):
                importer = FileImporter(
                    self.runtime,
                    fetcher,
                    recorder,
                    on_slot_idle=self._on_slot_idle,
                )
                tg.start_soon(self._import_loop, importer, tg)
                tg.start_soon(self._lease_loop)
                tg.start_soon(self._webhook_loop, webhook_session)
                tg.start_soon(self._blob_sweep_loop)
        finally:
            # Shielded: a worker stops by being cancelled (SIGTERM), and its spool
            # folder would otherwise stay behind until this pid's next start.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, self.spool_dir, True)

    async def _wait_for_schema(self) -> None:
        """Return once the database answers with this code's schema (`schema_problem`).

        A service upgraded without ``fileimport migrate`` could claim files and
        download them, then fail every result it writes: it waits instead,
        saying why (the wait doubles up to 30 s), as ``/readyz`` does.
        """
        waiting = FailureBackoff("worker.database_not_ready")
        while True:
            try:
                problem = await self.runtime.db.run_read(schema_problem)
            except Exception as exc:
                problem = f"unreachable: {type(exc).__name__}: {exc}"
            if problem is None:
                waiting.succeeded()
                return
            waiting.failed(RuntimeError(problem))
            await anyio.sleep(waiting.wait(self.runtime.settings.worker_poll_seconds))

    async def _import_loop(self, importer: FileImporter, tg: anyio.abc.TaskGroup) -> None:
        settings = self.runtime.settings
        idle = True
        while True:
            if self.store.failures or self.database.failures:
                poll = settings.worker_poll_seconds
                await anyio.sleep(max(self.store.wait(poll), self.database.wait(poll)))
            while (
                len(self.held) + self.claim_size <= self.max_held
                and not self.alone
                and not (self.draining and self.held)
            ):
                self.claiming = True
                try:
                    work = await self._claim(look_first=idle)
                finally:
                    self.claiming = False
                idle = work is None
                self.more_free = work is not None and work.claim.more
                if self.slot_idled:
                    self.slot_idled = False
                    self._on_slot_idle()
                if work is None:
                    break
                claim = work.claim
                self.draining = claim.suspects
                self.alone = claim.alone
                if claim.suspects or claim.alone:
                    self.suspect_job = claim.job_id
                elif claim.job_id == self.suspect_job:
                    self.suspect_job = None
                if claim.exhausted:
                    log.warning("import.files.interrupted", job_id=claim.job_id, files=claim.exhausted)
                if claim.alone:
                    (suspect,) = claim.files
                    log.warning(
                        "import.file.alone",
                        job_id=claim.job_id,
                        external_id=suspect.external_id,
                        leases=suspect.leases,
                    )
                announce_finished(work.finished, self.runtime.dispatcher)
                ids = [f.id for f in claim.files]
                self.held.update(ids)
                tg.start_soon(self._run_claim, importer, work, ids)
                if len(ids) < self.claim_size or self.draining or self.alone:
                    # A small job or a job's tail (`repository.claim_files`): what
                    # is left goes to other workers, or to this one once one of
                    # its download slots is idle (the importer wakes this loop).
                    break
            # After a failed claim, longer (a new job's wake-up still tries at once).
            if await self.runtime.dispatcher.wait(
                Topic.IMPORTS, self.claims.wait(settings.worker_poll_seconds)
            ):
                # Perhaps a new job: worth a claim once there is room, even if
                # this wake-up finds the worker holding all it may.
                self.more_free = True

    def _on_slot_idle(self) -> None:
        """A download slot is idle: claim more, unless the last claim took every free file.

        New jobs wake the loop themselves (`Topic.IMPORTS`), and files freed
        otherwise (an expired or handed-back lease) are found by the poll.
        """
        if self.claiming:
            self.slot_idled = True
        elif self.more_free:
            self.runtime.dispatcher.wake(Topic.IMPORTS)

    async def _claim(self, *, look_first: bool) -> ClaimedWork | None:
        """Lease the next files; None when there are none (or the database failed, logged).

        ``look_first`` (an idle worker's poll): read whether any file is free
        before claiming, since on SQLite a claim takes the write lock even
        when it finds nothing; a busy worker claims at once.
        """
        settings = self.runtime.settings
        work = None
        try:
            if not look_first or await self._any_free_files():
                now = utcnow()
                terms = repository.ClaimTerms(
                    owner=self.owner,
                    now=now,
                    lease_until=now + timedelta(seconds=settings.worker_lease_seconds),
                    limit=self.claim_size,
                    fill=settings.worker_concurrency,
                    max_leases=settings.file_max_leases,
                    alone_ok=not self.held,
                    prefer_job=self.suspect_job if not self.held else None,
                )
                work = await self.runtime.db.run_in_transaction(partial(claim_work, terms=terms))
        except Exception:
            self.claims.failed()
            return None
        self.claims.succeeded()
        return work

    async def _any_free_files(self) -> bool:
        return await self.runtime.db.run_read(partial(repository.any_claimable_files, now=utcnow()))

    async def _run_claim(self, importer: FileImporter, work: ClaimedWork, ids: list[int]) -> None:
        claim = work.claim
        log.debug("import.files.leased", job_id=claim.job_id, files=len(ids), owner=self.owner)
        finished = False
        try:
            await import_claimed_files(importer, work)
            finished = True  # every file has its result, which cleared its lease
            if ids:  # (an empty claim stored nothing: it says nothing of the store)
                self.store.succeeded()
                self.database.succeeded()
        except Exception as exc:
            # A fault not tied to one file (database, storage): the leases are
            # handed back and the files taken up again by a later claim, after
            # a wait that doubles while the fault lasts (a hot loop otherwise:
            # claims themselves may still work while results cannot be written).
            storage_error = _found_in(exc, StorageError)
            database_error = _found_in(exc, DATABASE_UNAVAILABLE)
            if storage_error is not None:
                # One line naming the store's own words, not the task group around it.
                self.store.failed(storage_error)
            elif database_error is not None:
                self.database.failed(database_error)
            else:
                log.exception("import.files.interrupted_by_fault", job_id=claim.job_id)
        finally:
            if not finished:
                # Shielded: on shutdown the import is cancelled, and the leases
                # of unfinished files must still be handed back so that another
                # worker can take them at once.
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    try:
                        async with self.runtime.db.transaction() as session:
                            await repository.release_file_leases(session, self.owner, ids)
                    except Exception:
                        log.exception("import.files.release_failed", job_id=claim.job_id)
            self.held.difference_update(ids)
            if claim.alone:
                self.alone = False
            # Room for another claim: worth one if the last claim left files,
            # if this one handed leases back, or if suspects wait for this
            # worker to drain or to finish the one it held alone.
            if self.more_free or not finished or self.draining or claim.alone:
                self.runtime.dispatcher.wake(Topic.IMPORTS)

    async def _lease_loop(self) -> None:
        settings = self.runtime.settings
        while True:
            await anyio.sleep(settings.worker_lease_seconds / 3)
            if not self.held:
                continue
            try:
                async with self.runtime.db.transaction() as session:
                    lease_until = utcnow() + timedelta(seconds=settings.worker_lease_seconds)
                    await repository.renew_file_leases(session, self.owner, sorted(self.held), lease_until)
            except Exception:
                log.exception("worker.lease_renewal_failed")

    async def _blob_sweep_loop(self) -> None:
        settings = self.runtime.settings
        while True:
            await anyio.sleep(settings.blob_sweep_interval.total_seconds())
            try:
                deleted = await delete_unreferenced_blobs(self.runtime, settings.blob_sweep_min_age)
                log.info("media.blob_sweep.done", deleted=deleted)
            except Exception:
                log.exception("media.blob_sweep.failed")

    async def _webhook_loop(self, session: aiohttp.ClientSession) -> None:
        settings = self.runtime.settings
        failures = FailureBackoff("webhook.loop_failed")
        while True:
            try:
                # A read first: claiming takes a write transaction, which on
                # SQLite queues for the lock that imports are using, and most
                # rounds find nothing due.
                wait = await seconds_until_next_delivery(self.runtime, settings.worker_poll_seconds)
                if wait <= 0:
                    await deliver_due_webhooks(self.runtime, session)
                    wait = await seconds_until_next_delivery(self.runtime, settings.worker_poll_seconds)
                failures.succeeded()
            except Exception:
                failures.failed()
                await anyio.sleep(failures.wait(settings.worker_poll_seconds))
                continue
            await self.runtime.dispatcher.wait(Topic.WEBHOOKS, max(wait, 0.05))


def _found_in(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """``exc`` if it is a ``kind``, or the first ``kind`` in it if it is a group (a task
    group's, nested or not); None when there is none."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _found_in(inner, kind)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, kind) else None


def remove_abandoned_spool_dirs(spool_root: Path) -> int:
    """Delete spool folders (``<pid>-<id>``) of worker processes no longer running; returns files removed.

    Only folders of this host's processes live under a local spool root, so a
    pid that does not exist means the worker died (killed, crashed) mid-download.
    """
    return remove_folders_of_dead_processes(spool_root, pid_prefix)
