"""The worker: leases import jobs and delivers webhooks until cancelled.

Jobs are leased in the database (``lease_owner``, ``lease_expires_at``) and the
lease is renewed while the job runs; a worker killed mid-job stops renewing,
and once the lease has expired any worker (the same service restarted, or
another process) takes the job over and imports the files that have no
result yet. Several workers may share one database.
"""

from __future__ import annotations

import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import anyio
import httpx2
import structlog

from fileimport import USER_AGENT
from fileimport.core.address_guard import create_guarded_transport, guard_from_settings
from fileimport.core.db import new_id, utcnow
from fileimport.core.dispatch import Topic
from fileimport.core.fetcher import OriginFetcher
from fileimport.core.runtime import Runtime
from fileimport.imports import repository
from fileimport.imports.pipeline import FileImporter
from fileimport.imports.recorder import ResultRecorder
from fileimport.imports.tasks import run_import_job
from fileimport.media.tasks import delete_unreferenced_blobs
from fileimport.webhooks.tasks import deliver_due_webhooks, seconds_until_next_delivery

log = structlog.get_logger(__name__)


class Worker:
    """Runs import jobs and webhook deliveries for one process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.owner = f"{socket.gethostname()[:200]}:{os.getpid()}:{new_id(nbytes=4)}"
        self.max_jobs = runtime.settings.worker_max_jobs
        # Each worker process spools into its own folder, so that a restarted
        # one can remove what a killed one left behind without touching the
        # downloads of others sharing the data folder.
        self.spool_dir = runtime.settings.spool_dir / f"{os.getpid()}-{new_id(nbytes=4)}"
        self.running: set[str] = set()
        self.files_limiter = anyio.Semaphore(runtime.settings.worker_concurrency)

    async def run(self) -> None:
        """Work until cancelled."""
        settings = self.runtime.settings
        guard = guard_from_settings(settings)
        webhook_client = httpx2.AsyncClient(
            transport=create_guarded_transport(guard),
            timeout=httpx2.Timeout(settings.webhook_timeout),
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
        )
        removed = await anyio.to_thread.run_sync(remove_abandoned_spool_dirs, settings.spool_dir)
        log.info("worker.started", owner=self.owner, abandoned_spool_files_removed=removed)
        async with (
            OriginFetcher(settings, guard=guard, spool_dir=self.spool_dir) as fetcher,
            ResultRecorder(self.runtime.db) as recorder,
            webhook_client,
            anyio.create_task_group() as tg,
        ):
            importer = FileImporter(self.runtime, fetcher, recorder)
            tg.start_soon(self._import_loop, importer, tg)
            tg.start_soon(self._lease_loop)
            tg.start_soon(self._webhook_loop, webhook_client)
            tg.start_soon(self._blob_sweep_loop)
        await anyio.to_thread.run_sync(shutil.rmtree, self.spool_dir, True)

    async def _import_loop(self, importer: FileImporter, tg: anyio.abc.TaskGroup) -> None:
        settings = self.runtime.settings
        while True:
            free = self.max_jobs - len(self.running)
            if free > 0:
                try:
                    async with self.runtime.db.transaction() as session:
                        now = utcnow()
                        lease_until = now + timedelta(seconds=settings.worker_lease_seconds)
                        job_ids = await repository.claim_jobs(session, self.owner, now, lease_until, free)
                except Exception:
                    log.exception("worker.claim_failed")
                    job_ids = []
                for job_id in job_ids:
                    self.running.add(job_id)
                    tg.start_soon(self._run_job, importer, job_id)
            await self.runtime.dispatcher.wait(Topic.IMPORTS, settings.worker_poll_seconds)

    async def _run_job(self, importer: FileImporter, job_id: str) -> None:
        log.info("import.job.leased", job_id=job_id, owner=self.owner)
        try:
            await run_import_job(self.runtime, importer, job_id, self.files_limiter)
        except Exception:
            # A fault not tied to one file (database, storage): the lease is
            # released and the job is taken up again on a later poll.
            log.exception("import.job.interrupted", job_id=job_id)
        finally:
            self.running.discard(job_id)
            # Shielded: on shutdown the job is cancelled, and its lease must
            # still be handed back so another worker can take it at once.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    async with self.runtime.db.transaction() as session:
                        await repository.release_lease(session, self.owner, job_id)
                except Exception:
                    log.exception("import.job.release_failed", job_id=job_id)
            self.runtime.dispatcher.wake(Topic.IMPORTS)

    async def _lease_loop(self) -> None:
        settings = self.runtime.settings
        while True:
            await anyio.sleep(settings.worker_lease_seconds / 3)
            if not self.running:
                continue
            try:
                async with self.runtime.db.transaction() as session:
                    lease_until = utcnow() + timedelta(seconds=settings.worker_lease_seconds)
                    await repository.renew_leases(session, self.owner, list(self.running), lease_until)
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

    async def _webhook_loop(self, client: httpx2.AsyncClient) -> None:
        settings = self.runtime.settings
        while True:
            try:
                await deliver_due_webhooks(self.runtime, client)
                wait = await seconds_until_next_delivery(self.runtime, settings.worker_poll_seconds)
            except Exception:
                log.exception("webhook.loop_failed")
                wait = settings.worker_poll_seconds
            await self.runtime.dispatcher.wait(Topic.WEBHOOKS, max(wait, 0.05))


def remove_abandoned_spool_dirs(spool_root: Path) -> int:
    """Delete spool folders (``<pid>-<id>``) of worker processes no longer running; returns files removed.

    Only folders of this host's processes live under a local spool root, so a
    pid that does not exist means the worker died (killed, crashed) mid-download.
    """
    removed = 0
    if not spool_root.is_dir():
        return 0
    for folder in spool_root.iterdir():
        pid_text = folder.name.split("-", 1)[0]
        if not folder.is_dir() or not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        removed += sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
