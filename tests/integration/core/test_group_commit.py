"""Group commit of local blobs: batches, durability order, and failures that stay contained."""

from __future__ import annotations

import errno
import hashlib
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import anyio
import pytest

from fileimport.core.group_commit import Flush, GroupCommit, LocalWrite, commit_writes, syncfs_flush
from fileimport.core.storage import blob_key, open_storage

pytestmark = pytest.mark.anyio


class RecordingFlush(Flush):
    """Flushes for real (fsync) and records what was on disk at each flush."""

    def __init__(self, fail_files: bool = False, fail_folders: bool = False) -> None:
        self.calls: list[str] = []
        self.targets_present_at_files_flush: list[bool] = []
        self.targets_present_at_folders_flush: list[bool] = []
        self.targets: list[Path] = []
        self.fail_files = fail_files
        self.fail_folders = fail_folders

    def files(self, paths: Sequence[Path]) -> None:
        self.calls.append(f"files:{len(paths)}")
        self.targets_present_at_files_flush = [t.exists() for t in self.targets]
        if self.fail_files:
            raise OSError(errno.EIO, "Input/output error")
        super().files(paths)

    def folders(self, paths: Iterable[Path]) -> None:
        folders = list(paths)
        self.calls.append(f"folders:{len(set(folders))}")
        self.targets_present_at_folders_flush = [t.exists() for t in self.targets]
        if self.fail_folders:
            raise OSError(errno.EIO, "Input/output error")
        super().folders(folders)


def _writes(root: Path, count: int) -> list[LocalWrite]:
    writes = []
    for n in range(count):
        data = f"blob {n}".encode()
        writes.append(LocalWrite(root.joinpath(*blob_key(hashlib.sha256(data).hexdigest()).split("/")), data))
    return writes


def _parts(root: Path) -> Path:
    return root / ".parts" / "this-process"


def _stray_files(root: Path) -> list[str]:
    """Files that are neither a blob nor a test's own input: part files left behind."""
    return sorted(
        p.name for p in root.rglob("*") if p.is_file() and (".parts" in p.parts or p.name.startswith("."))
    )


def test_data_is_flushed_before_the_renames_and_the_names_after(tmp_path: Path) -> None:
    # A name must never reach the disk before the bytes it points at: after a
    # crash a content-addressed blob of the right size but wrong bytes would
    # be kept for good.
    writes = _writes(tmp_path, 5)
    flush = RecordingFlush()
    flush.targets = [w.target for w in writes]

    commit_writes(writes, flush, _parts(tmp_path))

    assert flush.calls == ["files:5", "folders:5"]
    assert flush.targets_present_at_files_flush == [False] * 5
    assert flush.targets_present_at_folders_flush == [True] * 5
    assert [w.error for w in writes] == [None] * 5
    assert [w.target.read_bytes() for w in writes] == [f"blob {n}".encode() for n in range(5)]
    assert _stray_files(tmp_path) == []


def test_a_failed_data_flush_fails_the_whole_batch_and_leaves_nothing(tmp_path: Path) -> None:
    writes = _writes(tmp_path, 3)
    moved = tmp_path / "spooled"
    moved.write_bytes(b"a spooled download")
    writes.append(LocalWrite(tmp_path / "sha256" / "moved", source=moved))

    commit_writes(writes, RecordingFlush(fail_files=True), _parts(tmp_path))

    assert all(isinstance(w.error, OSError) and w.error.errno == errno.EIO for w in writes)
    assert not any(w.target.exists() for w in writes)
    assert _stray_files(tmp_path) == [], "part files of a failed batch were left behind"
    assert moved.read_bytes() == b"a spooled download", "a file to move must stay where it was"


def test_a_file_on_another_file_system_is_not_moved_and_stays(
    tmp_path: Path, other_file_system: Path
) -> None:
    # rename(2) cannot cross mounts: the write fails with EXDEV and leaves the
    # source where it was, for `ObjectStorage.put_file` to copy it instead.
    spooled = other_file_system / "download"
    spooled.write_bytes(b"spooled elsewhere")
    write = LocalWrite(tmp_path / "sha256" / "ab" / "blob", source=spooled)

    commit_writes([write], RecordingFlush(), _parts(tmp_path))

    assert isinstance(write.error, OSError)
    assert write.error.errno == errno.EXDEV
    assert not write.target.exists()
    assert spooled.read_bytes() == b"spooled elsewhere"
    assert _stray_files(tmp_path) == []


def test_a_failed_folder_flush_is_every_blobs_error(tmp_path: Path) -> None:
    writes = _writes(tmp_path, 3)

    commit_writes(writes, RecordingFlush(fail_folders=True), _parts(tmp_path))

    assert all(isinstance(w.error, OSError) for w in writes)


def test_one_blobs_failure_does_not_fail_the_others_of_its_batch(tmp_path: Path) -> None:
    writes = _writes(tmp_path, 3)
    blocked = writes[1].target.parent
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where a folder must go")

    commit_writes(writes, RecordingFlush(), _parts(tmp_path))

    assert writes[0].error is None
    assert isinstance(writes[1].error, OSError)
    assert writes[2].error is None
    assert writes[0].target.read_bytes() == b"blob 0"
    assert writes[2].target.read_bytes() == b"blob 2"
    assert _stray_files(tmp_path) == []


async def test_concurrent_writes_share_batches(tmp_path: Path) -> None:
    flush = RecordingFlush()
    commits = GroupCommit(flush, lambda: _parts(tmp_path))
    writes = _writes(tmp_path, 64)

    async with anyio.create_task_group() as tg:
        for write in writes:
            tg.start_soon(commits.write, write)

    assert [w.target.read_bytes() for w in writes] == [f"blob {n}".encode() for n in range(64)]
    data_flushes = [c for c in flush.calls if c.startswith("files:")]
    assert sum(int(c.split(":")[1]) for c in data_flushes) == 64
    assert len(data_flushes) <= 4, f"64 concurrent writes took {len(data_flushes)} flushes"


async def test_a_blobs_error_reaches_its_caller_only(tmp_path: Path) -> None:
    commits = GroupCommit(RecordingFlush(), lambda: _parts(tmp_path))
    writes = _writes(tmp_path, 2)
    writes[0].target.parent.parent.mkdir(parents=True)
    writes[0].target.parent.write_text("a file where a folder must go")
    outcome: dict[int, BaseException | None] = {}

    async def write(n: int) -> None:
        try:
            await commits.write(writes[n])
        except OSError as exc:
            outcome[n] = exc
        else:
            outcome[n] = None

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, 0)
        tg.start_soon(write, 1)

    assert isinstance(outcome[0], OSError)
    assert outcome[1] is None
    assert writes[1].target.read_bytes() == b"blob 1"


@pytest.mark.skipif(
    platform.system() != "Linux" or tuple(int(x) for x in platform.release().split(".")[:2]) < (5, 8),
    reason="syncfs reports write-back errors on Linux 5.8 and later only",
)
async def test_stores_flush_with_syncfs_on_linux_and_with_fsync_when_asked(tmp_path: Path) -> None:
    assert syncfs_flush(tmp_path) is not None
    for syncfs in ("true", "false"):
        root = tmp_path / syncfs
        storage = open_storage(root.as_uri(), {"syncfs": syncfs})
        blobs = [os.urandom(100 + n) for n in range(20)]
        keys = [blob_key(hashlib.sha256(b).hexdigest()) for b in blobs]
        async with anyio.create_task_group() as tg:
            for key, data in zip(keys, blobs, strict=True):
                tg.start_soon(storage.put_bytes, key, data)
        assert [(root / key).read_bytes() for key in keys] == blobs
        assert _stray_files(root) == []
