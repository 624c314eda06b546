"""The database layer on SQLite and on PostgreSQL: time zones, leases, racing upserts, JSON."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from fileimport.core.db import SQLITE_BUSY_TIMEOUT, Database, utcnow
from fileimport.core.settings import Settings
from fileimport.imports import repository
from fileimport.imports.models import ImportFile, ImportJob
from fileimport.imports.states import FileStatus
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
from fileimport.worker import Worker

ASSET = StoredAsset(key="sha256/ab/cd/" + "ab" * 32, sha256="ab" * 32, size=3, mime_type="image/png")
ORIGIN = OriginValidators("http://127.0.0.1/a.png", etag='"1"')
JOB_STARTED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def new_project_id(db: Database) -> int:
    async with db.transaction() as session:
        return (await create_project(session, "p")).id


def new_job(project_id: int, job_id: str, **values: object) -> ImportJob:
    return ImportJob(id=job_id, project_id=project_id, system_name="s", total_files=0, **values)


async def test_timestamps_come_back_as_utc_whatever_the_session_time_zone(db: Database) -> None:
    project_id = await new_project_id(db)
    started = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=45)))
    async with db.transaction() as session:
        session.add(new_job(project_id, "j1", started_at=started))

    async with db.sessionmaker() as session:
        job = await session.get(ImportJob, "j1")
    assert job is not None
    assert job.started_at == started
    assert job.started_at.tzinfo is UTC
    assert job.started_at.isoformat() == "2026-03-28T19:45:15.123456+00:00"


def new_file(job_id: str, position: int, **values: object) -> ImportFile:
    return ImportFile(
        job_id=job_id,
        position=position,
        external_id=f"{job_id}-{position}",
        url=f"http://127.0.0.1:9/{position}.png",
        file_name=f"{position}.png",
        metadata_={},
        **values,
    )


async def add_job(db: Database, project_id: int, now: datetime, files: list[ImportFile]) -> None:
    """Job ``j``, started at ``now``, with ``files`` (`new_file`)."""
    async with db.transaction() as session:
        session.add(new_job(project_id, "j", started_at=now))
        await session.flush()
        session.add_all(files)


async def claim(
    db: Database,
    owner: str,
    now: datetime,
    limit: int = 10,
    fill: int | None = None,
    *,
    alone_ok: bool = False,
    prefer_job: str | None = None,
) -> repository.ClaimedFiles | None:
    return await db.run_in_transaction(
        lambda session: repository.claim_files(
            session,
            repository.ClaimTerms(
                owner=owner,
                now=now,
                lease_until=now + timedelta(seconds=30),
                limit=limit,
                fill=limit if fill is None else fill,
                max_leases=3,
                alone_ok=alone_ok,
                prefer_job=prefer_job,
            ),
            interrupted_reason="gone",
        )
    )


async def test_reads_in_a_thread_see_commits_do_not_write_and_do_not_wait_for_a_writer(db: Database) -> None:
    project_id = await new_project_id(db)
    now = utcnow()
    await add_job(db, project_id, now, [new_file("j", 0)])

    assert await db.run_read(lambda session: repository.any_claimable_files(session, now))
    job = await db.run_read(lambda session: repository.get_job(session, "j", project_id))
    assert job is not None
    assert job.id == "j"

    def write(session: Session) -> None:
        session.execute(update(ImportJob).values(system_name="changed"))
        session.flush()
        session.commit()

    # Read-only transactions (PostgreSQL), read-only connections (SQLite).
    with pytest.raises(DBAPIError, match=r"read-only|readonly"):
        await db.run_read(write)
    names = await db.run_read(lambda session: session.scalars(select(ImportJob.system_name)).all())
    assert names == ["s"]

    # A writer holding the lock (SQLite: BEGIN IMMEDIATE) does not hold reads
    # up: a read waiting for it would answer only after the 30 s busy timeout.
    async with db.transaction() as session:
        await session.execute(update(ImportJob).values(claimed_at=now))
        started = time.monotonic()
        counts = await db.run_read(lambda s: repository.count_files_by_status(s, "j"))
        assert time.monotonic() - started < SQLITE_BUSY_TIMEOUT / 2
        assert counts == {FileStatus.PENDING: 1}


async def test_claim_takes_free_and_expired_leases_only_in_batch_order(db: Database) -> None:
    project_id = await new_project_id(db)
    now = utcnow()
    await add_job(
        db,
        project_id,
        now,
        [
            new_file("j", 0),
            new_file("j", 1, lease_owner="alive", lease_expires_at=now + timedelta(seconds=30)),
            new_file("j", 2, lease_owner="gone", lease_expires_at=now - timedelta(milliseconds=1)),
            new_file("j", 3, status=FileStatus.SUCCESS),
            new_file("j", 4),
        ],
    )

    claimed = await claim(db, "me", now)
    assert claimed is not None
    assert [f.position for f in claimed.files] == [0, 2, 4]
    assert {(f.lease_owner, f.leases) for f in claimed.files} == {("me", 1)}
    assert await claim(db, "other", now) is None
    # Once the leases have expired, another worker takes the files over.
    later = now + timedelta(seconds=31)
    taken_over = await claim(db, "other", later)
    assert taken_over is not None
    assert [(f.position, f.leases) for f in taken_over.files] == [(0, 2), (1, 1), (2, 2), (4, 2)]


async def test_claims_go_round_robin_across_jobs_and_split_a_job_between_workers(db: Database) -> None:
    project_id = await new_project_id(db)
    now = utcnow()
    async with db.transaction() as session:
        session.add(new_job(project_id, "big", started_at=now - timedelta(seconds=2)))
        session.add(new_job(project_id, "small", started_at=now - timedelta(seconds=1)))
        await session.flush()
        session.add_all([new_file("big", i) for i in range(6)] + [new_file("small", i) for i in range(2)])

    claims = [await claim(db, owner, now, limit=2) for owner in ("w1", "w2", "w1", "w2")]
    assert [(c.job_id, [f.position for f in c.files], c.more) for c in claims if c] == [
        ("big", [0, 1], True),
        ("small", [0, 1], True),  # "big" comes after it and has free files
        ("big", [2, 3], True),  # a full claim: there may be more
        ("big", [4, 5], True),
    ]
    last = await claim(db, "w1", now, limit=3)
    assert last is None


async def test_a_job_smaller_than_a_claim_is_shared_half_by_half_down_to_the_download_slots(
    db: Database,
) -> None:
    project_id = await new_project_id(db)
    now = utcnow()
    await add_job(db, project_id, now, [new_file("j", i) for i in range(9)])

    claims = [await claim(db, owner, now, limit=32, fill=2) for owner in ("w1", "w2", "w1", "w2")]
    assert [(c.files[0].lease_owner, [f.position for f in c.files]) for c in claims if c] == [
        ("w1", [0, 1, 2, 3, 4]),  # half of 9, rounded up
        ("w2", [5, 6]),  # half of 4, which is also the 2 download slots
        ("w1", [7, 8]),  # 2 left: a claim still fills the slots
    ]
    # Whether a claim left free files: a worker whose download slot idles
    # claims again only when its last claim said so.
    assert [c.more for c in claims if c] == [True, True, False]
    assert claims[3] is None


async def test_a_file_interrupted_max_leases_times_is_leased_again_only_alone_to_an_idle_worker(
    db: Database,
) -> None:
    """A worker's death interrupts every file it held: each of them is a suspect, tried alone."""
    project_id = await new_project_id(db)
    now = utcnow()
    await add_job(
        db,
        project_id,
        now,
        [new_file("j", 0, leases=3), new_file("j", 1, leases=3), new_file("j", 2, leases=1)],
    )

    busy = await claim(db, "busy", now)  # a worker holding other files: not the suspects
    assert busy is not None
    assert ([(f.position, f.leases) for f in busy.files], busy.alone, busy.suspects) == (
        [(2, 2)],
        False,
        True,
    )
    assert await claim(db, "busy", now) == repository.ClaimedFiles("j", [], 0, suspects=True)
    idle = await claim(db, "idle", now, alone_ok=True)
    assert idle is not None
    assert ([(f.position, f.leases) for f in idle.files], idle.alone) == ([(0, 4)], True)
    other = await claim(db, "idle-too", now, alone_ok=True)
    assert other is not None
    assert ([(f.position, f.leases) for f in other.files], other.alone) == ([(1, 4)], True)
    assert await claim(db, "idle-3", now, alone_ok=True) is None


async def test_an_idle_worker_takes_the_suspects_it_was_told_of_before_a_new_job(db: Database) -> None:
    """New jobs (never claimed) come first in the round robin: without ``prefer_job`` a stream of
    them would keep a job's suspects waiting."""
    project_id = await new_project_id(db)
    now = utcnow()
    async with db.transaction() as session:
        session.add(new_job(project_id, "old", started_at=now, claimed_at=now))
        session.add(new_job(project_id, "new", started_at=now))
        await session.flush()
        session.add_all([new_file("old", 0, leases=3), new_file("new", 0)])

    first = await claim(db, "idle", now, alone_ok=True)
    assert first is not None
    assert (first.job_id, first.alone) == ("new", False)
    told = await claim(db, "idle-too", now, alone_ok=True, prefer_job="old")
    assert told is not None
    assert (told.job_id, told.alone, [f.position for f in told.files]) == ("old", True, [0])


async def test_a_file_interrupted_even_alone_fails_as_interrupted_instead_of_being_leased_again(
    db: Database,
) -> None:
    project_id = await new_project_id(db)
    now = utcnow()
    await add_job(db, project_id, now, [new_file("j", 0, leases=4), new_file("j", 1, leases=2)])

    claimed = await claim(db, "me", now)
    assert claimed is not None
    assert claimed.exhausted == 1
    assert [(f.position, f.leases) for f in claimed.files] == [(1, 3)]
    async with db.sessionmaker() as session:
        files = (await session.execute(select(ImportFile).order_by(ImportFile.position))).scalars().all()
    assert [(f.status, f.code, f.reason) for f in files] == [
        (FileStatus.FAILED, "interrupted", "gone"),
        (FileStatus.PENDING, None, None),
    ]


async def test_released_leases_are_free_at_once_and_not_counted(db: Database) -> None:
    project_id = await new_project_id(db)
    now = utcnow()
    await add_job(db, project_id, now, [new_file("j", 0), new_file("j", 1)])
    claimed = await claim(db, "me", now)
    assert claimed is not None
    async with db.transaction() as session:
        await repository.release_file_leases(session, "someone-else", [f.id for f in claimed.files])
    assert await claim(db, "other", now) is None
    async with db.transaction() as session:
        await repository.release_file_leases(session, "me", [f.id for f in claimed.files])
    again = await claim(db, "other", now)
    assert again is not None
    assert [(f.position, f.leases, f.lease_owner) for f in again.files] == [(0, 1, "other"), (1, 1, "other")]


async def test_two_transactions_racing_on_one_key_make_one_entry(db: Database) -> None:
    """The loser's insert hits the unique constraint (PostgreSQL) or waits for the writer (SQLite)."""
    project_id = await new_project_id(db)
    change = EntryChange("legacy", "cat-1", "cat", {"caption": "a cat"}, "image")

    async def second() -> tuple[str, UpsertAction]:
        async with db.transaction() as session:
            outcome = await session.run_sync(
                upsert_entry, project_id, EntryImport(change, ASSET, ORIGIN, JOB_STARTED)
            )
            return outcome.media_id, outcome.action

    async with db.transaction() as session:
        first = await session.run_sync(
            upsert_entry, project_id, EntryImport(change, ASSET, ORIGIN, JOB_STARTED)
        )
        racing = asyncio.create_task(second())
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second transaction should wait for the first"
    media_id, action = await asyncio.wait_for(racing, 10)

    assert first.action is UpsertAction.CREATED
    assert (media_id, action) == (first.media_id, UpsertAction.UNCHANGED)
    async with db.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(MediaEntry)) == 1


async def test_racing_update_after_unique_violation_bumps_the_version_once(db: Database) -> None:
    project_id = await new_project_id(db)
    change = EntryChange("legacy", "cat-1", "cat", {}, "image")
    changed = EntryChange("legacy", "cat-1", "cat", {"caption": "new"}, "image")

    async def second() -> tuple[int, UpsertAction]:
        async with db.transaction() as session:
            outcome = await session.run_sync(
                upsert_entry, project_id, EntryImport(changed, ASSET, ORIGIN, JOB_STARTED)
            )
            return outcome.version, outcome.action

    async with db.transaction() as session:
        await session.run_sync(upsert_entry, project_id, EntryImport(change, ASSET, ORIGIN, JOB_STARTED))
        racing = asyncio.create_task(second())
        await asyncio.sleep(0.5)
    assert await asyncio.wait_for(racing, 10) == (2, UpsertAction.UPDATED)
    async with db.sessionmaker() as session:
        entry = (await session.execute(select(MediaEntry))).scalar_one()
    assert (entry.version, entry.metadata_) == (2, {"caption": "new"})


async def test_json_metadata_round_trips_unicode_and_nesting(db: Database) -> None:
    project_id = await new_project_id(db)
    metadata = {"title": "Zürich ☃ 東京", "tags": ["a", "b"], "n": 1.5, "nested": {"ok": True, "none": None}}
    async with db.transaction() as session:
        await session.run_sync(
            upsert_entry,
            project_id,
            EntryImport(EntryChange("s", "e", "f", metadata, "image"), ASSET, ORIGIN, JOB_STARTED),
        )
    async with db.transaction() as session:
        again = await session.run_sync(
            upsert_entry,
            project_id,
            EntryImport(EntryChange("s", "e", "f", dict(metadata), "image"), ASSET, ORIGIN, JOB_STARTED),
        )
    assert again.action is UpsertAction.UNCHANGED


async def test_a_worker_on_a_host_with_a_long_name_can_lease_files(
    db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Kubernetes pod host names reach 63 characters; the lease owner must fit its column (PostgreSQL enforces it)."""
    monkeypatch.setattr(socket, "gethostname", lambda: "fileimport-worker-" + "x" * 45)
    owner = Worker(SimpleNamespace(settings=Settings(data_dir=tmp_path))).owner  # type: ignore[arg-type]
    project_id = await new_project_id(db)
    now = utcnow()
    async with db.transaction() as session:
        session.add(new_job(project_id, "j1", started_at=now))
        await session.flush()
        session.add(new_file("j1", 0))
    claimed = await claim(db, owner, now)
    assert claimed is not None
    assert claimed.files[0].lease_owner == owner


async def test_a_job_with_free_files_is_claimed_when_the_jobs_claimed_before_it_have_none(
    db: Database,
) -> None:
    """Claims look first at the jobs leased least recently. When every one of those has all
    its files leased (long downloads at their tails), a job leased more recently that still
    has free files must be claimed, not left until one of those tails ends."""
    project_id = await new_project_id(db)
    now = utcnow()
    busy = [f"busy-{n}" for n in range(repository.CLAIM_JOB_CANDIDATES)]
    async with db.transaction() as session:
        for n, job_id in enumerate(busy):
            session.add(
                new_job(project_id, job_id, started_at=now, claimed_at=now - timedelta(minutes=10 - n))
            )
        session.add(new_job(project_id, "waiting", started_at=now, claimed_at=now - timedelta(minutes=1)))
        await session.flush()
        session.add_all(
            [
                new_file(job_id, 0, lease_owner="other", lease_expires_at=now + timedelta(hours=1))
                for job_id in busy
            ]
            + [new_file("waiting", 0), new_file("waiting", 1)]
        )

    claimed = await claim(db, "w1", now, limit=2)
    assert claimed is not None
    assert (claimed.job_id, [f.position for f in claimed.files]) == ("waiting", [0, 1])
    assert await claim(db, "w2", now, limit=2) is None


async def test_an_unchanged_import_from_another_url_keeps_that_urls_validators_with_it(db: Database) -> None:
    """The same bytes from URL B: the entry keeps B's ETag, so it must keep B as its source too;
    before, B's ETag was stored under URL A, and the next import of A asked A with B's ETag."""
    project_id = await new_project_id(db)
    change = EntryChange("s", "k", "f", {}, "image")
    from_b = OriginValidators("http://127.0.0.1/b.png", etag='"b"')
    async with db.transaction() as session:
        await session.run_sync(upsert_entry, project_id, EntryImport(change, ASSET, ORIGIN, JOB_STARTED))
    async with db.transaction() as session:
        outcome = await session.run_sync(
            upsert_entry, project_id, EntryImport(change, ASSET, from_b, JOB_STARTED)
        )
    assert outcome.action is UpsertAction.UNCHANGED
    async with db.sessionmaker() as session:
        entry = (await session.scalars(select(MediaEntry))).one()
    assert (entry.source_url, entry.origin_etag) == (from_b.url, '"b"')
