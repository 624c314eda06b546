"""A job's end: ``success`` in the same transaction that gives its last file a result.

Finishing a job in a transaction of its own, after the last result was
committed, left a window: a worker killed between the two left the job
``started`` for ever, with every file done, no claim to pick it up again and
no webhook (SPEC.md: safe re-runs after a crash). Here the job's state, its
``finished_at`` and its webhook delivery are written with the result that
ends it, so a job is either still pending or finished with its webhook
scheduled. `finish_stranded_jobs` finishes jobs left behind by versions that
had the window; workers run it when they start.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session

from fileimport.core.db import utcnow
from fileimport.core.dispatch import Dispatcher, Topic
from fileimport.core.metrics import JOBS_FINISHED
from fileimport.imports import repository
from fileimport.imports.models import ImportJob
from fileimport.imports.states import FileStatus, JobState
from fileimport.webhooks.service import schedule_delivery

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FinishedJob:
    """A job that a transaction finished: its id and its files' count by result."""

    job_id: str
    counts: dict[FileStatus, int]


def finish_jobs_if_done(session: Session, job_ids: Iterable[str]) -> list[FinishedJob]:
    """Give each of ``job_ids`` that is ``started`` and has no pending file the state ``success``,
    its ``finished_at`` and its webhook delivery; returns the jobs finished. Sync: call it in the
    transaction that wrote the results, after writing them.

    Each job row is locked (``FOR UPDATE``, in id order so that two
    transactions cannot wait on each other) *before* its files are counted.
    Without the lock, two PostgreSQL transactions recording the last two
    files of one job at once would each still see the other's file pending
    (READ COMMITTED) and neither would finish the job. With it, the second
    waits for the first to commit and then sees its results. SQLite runs one
    writer at a time and needs no lock.
    """
    finished: list[FinishedJob] = []
    for job_id in sorted(set(job_ids)):
        if not repository.lock_started_job(session, job_id):
            continue
        if repository.has_pending_files(session, job_id):
            continue
        job = session.get_one(ImportJob, job_id)
        files = repository.list_file_results(session, job_id)
        job.state = JobState.SUCCESS
        job.finished_at = utcnow()
        schedule_delivery(session, job, files)
        finished.append(FinishedJob(job_id, Counter(FileStatus(f.status) for f in files)))
    return finished


def finish_stranded_jobs(session: Session) -> list[FinishedJob]:
    """Finish ``started`` jobs whose files all have results (sync, in a transaction).

    Such a job can only have been left by an earlier version, which finished
    jobs after the last result's transaction, when its worker stopped in
    between.
    """
    return finish_jobs_if_done(session, repository.started_jobs_without_pending_files(session))


def announce_finished(finished: list[FinishedJob], dispatcher: Dispatcher | None) -> None:
    """After the commit: count and log each finished job and wake the webhook deliveries."""
    for job in finished:
        JOBS_FINISHED.labels(state=JobState.SUCCESS).inc()
        log.info(
            "import.job.finished",
            job_id=job.job_id,
            state=JobState.SUCCESS,
            counts={str(k): v for k, v in job.counts.items()},
        )
    if finished and dispatcher is not None:
        dispatcher.wake(Topic.WEBHOOKS)
