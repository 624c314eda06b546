"""The worker: leases import jobs and delivers webhooks until cancelled.

Jobs are leased in the database (``lease_owner``, ``lease_expires_at``) and the
lease is renewed while the job runs; a worker killed mid-job stops renewing,
and once the lease has expired any worker (the same service restarted, or
another process) takes the job over and imports the files that have no
result yet. Several workers may share one database.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

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
from fileimport.imports.tasks import run_import_job
from fileimport.webhooks.tasks import deliver_due_webhooks, seconds_until_next_delivery

log = structlog.get_logger(__name__)


class Worker:
    """Runs import jobs and webhook deliveries for one process."""

    def __init__(self, runtime: Runtime, *, max_jobs: int = 4) -> None:
        self.runtime = runtime
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id(nbytes=4)}"
        self.max_jobs = max_jobs
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
        log.info("worker.started", owner=self.owner)
        async with (
            OriginFetcher(settings, guard=guard, spool_dir=settings.spool_dir) as fetcher,
            webhook_client,
            anyio.create_task_group() as tg,
        ):
            importer = FileImporter(self.runtime, fetcher)
            tg.start_soon(self._import_loop, importer, tg)
            tg.start_soon(self._lease_loop)
            tg.start_soon(self._webhook_loop, webhook_client)

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
