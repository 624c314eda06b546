"""The result recorder when another worker creates the same key while a batch is being written."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fileimport.auth.service import Principal
from fileimport.core.db import Database, utcnow
from fileimport.imports import repository
from fileimport.imports.completion import finish_jobs_if_done
from fileimport.imports.models import ImportFile, ImportJob
from fileimport.imports.recorder import ResultRecorder
from fileimport.imports.schemas import ImportRequest
from fileimport.imports.service import create_job
from fileimport.imports.states import FileStatus, JobState
from fileimport.media.models import MediaEntry
from fileimport.media.service import (
    EntryChange,
    EntryImport,
    OriginValidators,
    StoredAsset,
    UpsertAction,
    upsert_entry,
)
from fileimport.projects.service import create_project
from fileimport.webhooks.models import WebhookDelivery

SHA = "ab" * 32
ASSET = StoredAsset(key=f"sha256/ab/ab/{SHA}", sha256=SHA, size=3, mime_type="image/png")
ORIGIN = OriginValidators("http://127.0.0.1:9/a.png")
JOB_STARTED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def new_job(db: Database, body: dict[str, Any]) -> tuple[int, str, list[ImportFile]]:
    """Project ``p`` and a job of ``body`` (the POST's JSON): (project id, job id, its files in order)."""
    async with db.transaction() as session:
        project_id = (await create_project(session, "p")).id
        request = ImportRequest.model_validate(body)
        job_id = await create_job(session, Principal(project_id, "p", frozenset()), request)
    files = await db.run_read(
        lambda session: list(
            session.scalars(
                select(ImportFile).where(ImportFile.job_id == job_id).order_by(ImportFile.position)
            )
        )
    )
    return project_id, job_id, files


async def test_a_key_created_by_another_transaction_mid_batch_gives_one_entry_and_every_result(
    database_url: str,
) -> None:
    """On PostgreSQL the batch's insert waits on the other transaction's uncommitted row, then
    fails on the unique key when it commits; the recorder writes the batch again file by file,
    and the racing file finds the entry (skipped) while the others are created. On SQLite the
    batch waits for the write lock and then sees the entry: the same outcome by the plain path."""
    db = Database(database_url)
    try:
        project_id, job_id, files = await new_job(
            db,
            {
                "systemName": "s",
                "files": [
                    {"url": ORIGIN.url, "id": external_id, "fileName": "a"}
                    for external_id in ("raced", "other-1", "other-2")
                ],
            },
        )

        def change(external_id: str) -> EntryChange:
            return EntryChange("s", external_id, "a", {}, "image")

        async with ResultRecorder(db) as recorder:
            async with db.transaction() as other_worker:
                # Another worker's transaction creates the raced key and holds it uncommitted.
                await other_worker.run_sync(
                    upsert_entry, project_id, EntryImport(change("raced"), ASSET, ORIGIN, JOB_STARTED)
                )
                batch = [
                    asyncio.create_task(
                        recorder.record_import(
                            job_id,
                            project_id,
                            f.id,
                            EntryImport(change(f.external_id), ASSET, ORIGIN, JOB_STARTED),
                            1,
                        )
                    )
                    for f in files
                ]
                await asyncio.sleep(0.5)
                assert not any(task.done() for task in batch), "the batch should wait for the other worker"
            results = await asyncio.wait_for(asyncio.gather(*batch), 30)

        assert [r.status for r in results] == [FileStatus.SKIPPED, FileStatus.SUCCESS, FileStatus.SUCCESS]

        def read(session: Session) -> tuple[list[tuple[str, str]], list[tuple[FileStatus, str | None]], int]:
            entries = [
                (row.external_id, row.id)
                for row in session.execute(select(MediaEntry.external_id, MediaEntry.id))
            ]
            recorded = [(f.status, f.media_id) for f in repository.list_file_results(session, job_id)]
            return entries, recorded, session.scalar(select(func.count()).select_from(MediaEntry)) or 0

        entries, recorded, count = await db.run_read(read)
        assert count == 3
        by_key = dict(entries)
        assert recorded == [
            (FileStatus.SKIPPED, by_key["raced"]),
            (FileStatus.SUCCESS, by_key["other-1"]),
            (FileStatus.SUCCESS, by_key["other-2"]),
        ]
    finally:
        await db.dispose()


async def test_the_last_two_results_recorded_at_once_finish_the_job_once(database_url: str) -> None:
    """Another transaction records one of a job's two files and holds its lock on the job; the
    recorder's batch for the other file waits for it, then sees both results and finishes the
    job with its webhook delivery in its own transaction. (Without the job's lock, on
    PostgreSQL each would still see the other's file pending and neither would finish it.)"""
    db = Database(database_url)
    try:
        project_id, job_id, (first, last) = await new_job(
            db,
            {
                "systemName": "s",
                "webhook": "http://127.0.0.1:9/hook",
                "files": [{"url": ORIGIN.url, "id": key, "fileName": "a"} for key in ("first", "last")],
            },
        )

        async with ResultRecorder(db) as recorder:
            async with db.transaction() as other_worker:
                row = {
                    "id": first.id,
                    "status": FileStatus.FAILED,
                    "media_id": None,
                    "code": "http_404",
                    "reason": "gone",
                    "attempts": 1,
                    "finished_at": utcnow(),
                }
                await other_worker.run_sync(repository.record_file_results, [row])
                assert await other_worker.run_sync(finish_jobs_if_done, [job_id]) == []  # "last" pends
                recording = asyncio.create_task(
                    recorder.record_failure(job_id, project_id, last.id, "http_404", "gone too", 1)
                )
                await asyncio.sleep(0.5)
                assert not recording.done(), "the batch should wait for the other transaction"
            result = await asyncio.wait_for(recording, 30)

        assert result.status is FileStatus.FAILED
        job, deliveries = await db.run_read(
            lambda session: (
                session.get_one(ImportJob, job_id),
                list(session.scalars(select(WebhookDelivery))),
            )
        )
        assert (job.state, job.finished_at is not None) == (JobState.SUCCESS, True)
        assert len(deliveries) == 1
        assert '"failed":2' in deliveries[0].payload
    finally:
        await db.dispose()


async def test_a_job_s_files_are_stored_as_posted_whatever_their_characters(database_url: str) -> None:
    """PostgreSQL takes a job's files by COPY, whose text format escapes tabs, newlines and
    backslashes: every field must come back as it was posted."""
    name = "back\\slash \\N 'quote' \"dq\" ünï 😀 ,;|"  # ids and names refuse control characters
    text = "tab\there\nnew line\r " + name
    files = [
        {
            "url": f"http://127.0.0.1:9/{i}.png?q=a%09b",
            "id": f"{name}-{i}",
            "fileName": name,
            "metadata": {"caption": text, "nested": {"list": [1, 2.5, None, True, "\\N"]}},
            **({"mediaType": "image"} if i % 2 else {}),
        }
        for i in range(3)
    ]
    db = Database(database_url)
    try:
        _, _, stored = await new_job(db, {"systemName": "s", "files": files})
    finally:
        await db.dispose()

    assert [
        (
            f.position,
            f.url,
            f.external_id,
            f.file_name,
            f.metadata_,
            f.media_type,
            f.status,
            f.attempts,
            f.leases,
        )
        for f in stored
    ] == [
        (i, p["url"], p["id"], p["fileName"], p["metadata"], p.get("mediaType"), FileStatus.PENDING, 0, 0)
        for i, p in enumerate(files)
    ]


async def test_a_result_that_cannot_be_written_for_a_caller_gone_leaves_the_recorder_running(
    database_url: str,
) -> None:
    """A fault that fails a file's result can also have cancelled its caller (its claim's other
    files failed on it too). Settling that caller's future raised InvalidStateError, which
    ended the recorder, and with it the worker: no later result was ever written."""
    db = Database(database_url)
    try:
        project_id, job_id, (first, second) = await new_job(
            db,
            {
                "systemName": "s",
                "files": [
                    {"url": ORIGIN.url, "id": external_id, "fileName": "a"} for external_id in ("x", "y")
                ],
            },
        )
        no_such_project = project_id + 1000  # its entry breaks the foreign key: the write fails

        def entry_import(external_id: str) -> EntryImport:
            return EntryImport(EntryChange("s", external_id, "a", {}, "image"), ASSET, ORIGIN, JOB_STARTED)

        async with ResultRecorder(db) as recorder:
            doomed = asyncio.create_task(
                recorder.record_import(job_id, no_such_project, first.id, entry_import("x"), 1)
            )
            await asyncio.sleep(0.001)  # the recorder has taken it and is writing it (in a thread)
            doomed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await doomed
            result = await asyncio.wait_for(
                recorder.record_import(job_id, project_id, second.id, entry_import("y"), 1), 30
            )
        assert result.status is FileStatus.SUCCESS
    finally:
        await db.dispose()


async def test_an_older_jobs_import_recorded_after_a_newer_ones_changes_nothing(database_url: str) -> None:
    """A sync posts job 1 (the file as it was), then job 2 (as it is now); job 1's download is
    slow and its result comes last. It must not put the old file back: the entry keeps job 2's
    bytes, and job 1's file is skipped with a reason. A job posted later still wins."""
    db = Database(database_url)
    try:
        project_id, job_id, (file,) = await new_job(
            db, {"systemName": "s", "files": [{"url": ORIGIN.url, "id": "k", "fileName": "a"}]}
        )
        old_bytes = StoredAsset(
            key="sha256/01/01/" + "01" * 32, sha256="01" * 32, size=1, mime_type="image/png"
        )
        new_bytes = StoredAsset(
            key="sha256/02/02/" + "02" * 32, sha256="02" * 32, size=2, mime_type="image/png"
        )
        change = EntryChange("s", "k", "a", {}, "image")
        posted = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        job_1, job_2, job_3 = posted, posted + timedelta(seconds=1), posted + timedelta(seconds=2)

        def entry_sha(session: Session) -> str:
            return session.scalars(select(MediaEntry.sha256)).one()

        async with db.transaction() as session:  # job 2's import, recorded first
            await session.run_sync(upsert_entry, project_id, EntryImport(change, new_bytes, ORIGIN, job_2))
        async with ResultRecorder(db) as recorder:
            late = await recorder.record_import(
                job_id, project_id, file.id, EntryImport(change, old_bytes, ORIGIN, job_1), 1
            )
        assert late.status is FileStatus.SKIPPED
        assert await db.run_read(entry_sha) == new_bytes.sha256
        (result,) = await db.run_read(lambda session: repository.list_file_results(session, job_id))
        assert result.reason is not None
        assert "a job posted later" in result.reason

        async with db.transaction() as session:  # a job posted after both: it wins
            newest = await session.run_sync(
                upsert_entry, project_id, EntryImport(change, old_bytes, ORIGIN, job_3)
            )
        assert newest.action is UpsertAction.UPDATED
        assert await db.run_read(entry_sha) == old_bytes.sha256
    finally:
        await db.dispose()
