"""Background work of the import feature: claiming files and importing them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.orm import Session

from fileimport.imports import repository
from fileimport.imports.completion import FinishedJob, finish_jobs_if_done
from fileimport.imports.pipeline import FileImporter, JobContext
from fileimport.media.repository import KnownEntry, list_known_entries
from fileimport.projects.config import ProjectConfig

INTERRUPTED_REASON = (
    "The import of this file was started {leases} times, the last time alone in its worker, and "
    "never finished: each time its worker stopped (killed, crashed or lost the database) before "
    "recording a result; see the service log."
)


@dataclass(frozen=True)
class ClaimedWork:
    """Files leased by one claim and what they share, read in the claiming transaction.

    ``existing`` holds the entries already in the library under the files'
    external ids (for conditional requests); the import re-reads them under
    lock before changing anything. ``finished`` holds the job when the claim
    failed its last pending files as interrupted (to announce after the commit).
    """

    claim: repository.ClaimedFiles
    ctx: JobContext
    existing: dict[str, KnownEntry]
    finished: list[FinishedJob]


def claim_work(session: Session, terms: repository.ClaimTerms) -> ClaimedWork | None:
    """`repository.claim_files`, plus the job's context and existing entries in the same
    transaction (and the job's end when the files it failed were its last); None when no file
    is free. Sync: runs in `Database.run_in_transaction`.

    One hop to a thread per claim: reading the job, its project and the
    entries afterwards on the event loop took three more round trips.
    """
    claim = repository.claim_files(
        session, terms, interrupted_reason=INTERRUPTED_REASON.format(leases=terms.max_leases + 1)
    )
    if claim is None:
        return None
    # Files failed here as interrupted may have been the job's last pending ones.
    finished = finish_jobs_if_done(session, [claim.job_id]) if claim.exhausted else []
    project_id, system_name, started_at, config = repository.job_of_claim(session, claim.job_id)
    ctx = JobContext(claim.job_id, project_id, system_name, started_at, ProjectConfig.model_validate(config))
    keys = [f.external_id for f in claim.files]
    existing = list_known_entries(session, project_id, system_name, keys)
    return ClaimedWork(claim, ctx, existing, finished)


async def import_claimed_files(importer: FileImporter, work: ClaimedWork) -> None:
    """Import the files of one claim (all of one job).

    The caller holds the files' leases. Files are imported concurrently, at
    most as many downloads at once as the fetcher's download slots allow
    across every claim of this worker. A file given a result
    meanwhile by another worker (after its lease expired here) is left as it
    is. The job finishes in the transaction that records its last result
    (`fileimport.imports.completion`).
    """
    async with asyncio.TaskGroup() as tg:  # asyncio's: a task costs less than with anyio's
        for file in work.claim.files:
            tg.create_task(importer.import_file(work.ctx, file, work.existing.get(file.external_id)))
