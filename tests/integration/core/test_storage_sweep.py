"""``delete_if_written_before``: a blob written again since it was listed is kept; what a
killed store left behind is swept."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fileimport.core.runtime import open_runtime
from fileimport.core.settings import Settings
from fileimport.core.storage import PARTS_FOLDER, blob_key, open_storage
from fileimport.media.tasks import delete_unreferenced_blobs
from tests.support.service import migrate_async


@pytest.mark.parametrize("content_addressed", [False, True])
async def test_old_blobs_go_and_freshly_rewritten_ones_stay(tmp_path: Path, content_addressed: bool) -> None:
    storage = open_storage((tmp_path / "blobs").as_uri())
    now = datetime.now(UTC)
    for name in ("old", "rewritten"):
        source = tmp_path / f"{name}.bin"
        source.write_bytes(name.encode())
        await storage.put_file(f"sha256/{name}", source)
    an_hour_ago = (now - timedelta(hours=1)).timestamp()
    for name in ("old", "rewritten"):
        os.utime(tmp_path / "blobs" / "sha256" / name, (an_hour_ago, an_hour_ago))
    listed = {blob.key: blob.last_modified async for blob in storage.list_blobs("sha256/")}
    assert all(modified < now - timedelta(minutes=30) for modified in listed.values())

    # An import writes "rewritten" again after the sweep listed it.
    again = tmp_path / "again.bin"
    again.write_bytes(b"rewritten")
    # (Content-addressed, the bytes are not written again: only the time of writing is refreshed.)
    await storage.put_file("sha256/rewritten", again, content_addressed=content_addressed)

    cutoff = now - timedelta(minutes=10)
    assert await storage.delete_if_written_before("sha256/old", cutoff) is True
    assert await storage.delete_if_written_before("sha256/rewritten", cutoff) is False
    assert await storage.delete_if_written_before("sha256/absent", cutoff) is False
    assert {key async for key in storage.list_keys("sha256/")} == {"sha256/rewritten"}
    assert [p.name for p in (tmp_path / "blobs" / "sha256").iterdir()] == ["rewritten"]


# Stores a small file (put_bytes) on a disk slow to flush, and says so once it waits in the
# flush of the written file (fsync or syncfs, whichever this system uses).
KILLED_WRITER = """
import asyncio, os, sys, time
from pathlib import Path
from fileimport.core import group_commit
from fileimport.core.storage import open_storage

root, key, in_fsync = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def slow_flush(self, paths):
    in_fsync.touch()
    time.sleep(60)

group_commit.Flush.files = slow_flush
group_commit._SyncfsFlush.files = slow_flush
asyncio.run(open_storage(root.as_uri()).put_bytes(key, b"x" * 1000))
"""


async def test_a_small_file_whose_store_was_killed_leaves_nothing_after_a_sweep(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    settings.data_dir.mkdir()
    await migrate_async(settings.resolved_database_url)
    blobs = settings.data_dir / "blobs"
    in_fsync = tmp_path / "in-fsync"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(blobs), blob_key("ab" * 32), str(in_fsync)]
    )
    try:
        deadline = time.monotonic() + 30
        while not in_fsync.exists():
            assert writer.poll() is None, "the writer exited before it reached fsync"
            assert time.monotonic() < deadline, "the writer never reached fsync"
            time.sleep(0.01)
    finally:
        writer.send_signal(signal.SIGKILL)  # kill -9 in the middle of storing: no cleanup of any kind
        writer.wait()
    assert [p for p in blobs.rglob("*") if p.is_file()], "the killed store left no part file to sweep"

    runtime = open_runtime(settings)
    try:
        await delete_unreferenced_blobs(runtime, timedelta(0))
    finally:
        await runtime.close()
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


async def test_a_blob_a_killed_sweep_left_aside_is_put_back_by_the_next_sweep(tmp_path: Path) -> None:
    # A sweep moved a blob aside just after an import refreshed it, and was
    # killed before it looked at the blob's time; the import's entry names the
    # blob. The next sweep must put it back, whatever its age, and never
    # delete it as an orphan.
    settings = Settings(data_dir=tmp_path / "var")
    settings.data_dir.mkdir()
    await migrate_async(settings.resolved_database_url)
    runtime = open_runtime(settings)
    try:
        data = b"a blob an entry is about to reference"
        key = blob_key(hashlib.sha256(data).hexdigest())
        await runtime.storage.put_bytes(key, data)
        blob = settings.data_dir / "blobs" / key
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()  # its pid is no process now: the killed sweep's
        aside = blob.with_name(f".{blob.name}.deleting-{dead.pid}")
        os.rename(blob, aside)
        an_hour_ago = time.time() - 3600
        os.utime(aside, (an_hour_ago, an_hour_ago))

        assert await delete_unreferenced_blobs(runtime, timedelta(minutes=10)) == 0

        assert blob.read_bytes() == data
        assert not aside.exists()
        # A set-aside name of a sweep still running (this process) is left to it.
        running_aside = blob.with_name(f".{blob.name}.deleting-{os.getpid()}")
        os.rename(blob, running_aside)
        await delete_unreferenced_blobs(runtime, timedelta(minutes=10))
        assert running_aside.exists()
    finally:
        await runtime.close()


async def test_only_part_files_of_this_hosts_dead_processes_are_removed(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "blobs").as_uri())
    await storage.put_bytes(blob_key("cd" * 32), b"a blob")  # makes this process's parts folder
    parts = tmp_path / "blobs" / PARTS_FOLDER
    (mine,) = parts.iterdir()
    host = mine.name.rpartition("-")[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = {
        "killed": parts / f"{host}-{dead.pid}",
        "running": parts / f"{host}-{os.getpid()}",
        "other host": parts / f"elsewhere-{dead.pid}",
    }
    for folder in left.values():
        folder.mkdir(exist_ok=True)
        (folder / "x.0123456789ab").write_bytes(b"half a blob")

    assert await storage.remove_abandoned_parts() == 1

    assert not left["killed"].exists()
    assert (left["running"] / "x.0123456789ab").exists()
    assert (left["other host"] / "x.0123456789ab").exists()
