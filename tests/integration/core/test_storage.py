"""ObjectStorage against a local folder, memory, and a real S3 endpoint (moto)."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from obstore.store import S3Store

from fileimport.core.group_commit import Flush, GroupCommit
from fileimport.core.storage import (
    BlobNotFoundError,
    BlobStorage,
    ObjectStorage,
    StorageError,
    StorageNotWritableError,
    blob_key,
    open_storage,
)
from tests.support.s3 import S3Bucket, obstore_options, s3_bucket  # noqa: F401

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("memory", id="memory"),
    pytest.param("s3", id="s3", marks=pytest.mark.s3),
]

MakeFile = Callable[[int], tuple[Path, bytes]]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStorage:
    """A fresh, empty store of each kind."""
    if request.param == "local":
        return open_storage((tmp_path / "blobs").as_uri())
    if request.param == "memory":
        return open_storage("memory://")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return open_storage(bucket.fresh_url(), bucket.options)


@pytest.fixture
def make_file(tmp_path: Path) -> MakeFile:
    """Write ``size`` random bytes to a new file in ``tmp_path/incoming``."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    counter = iter(range(1_000_000))

    def make(size: int) -> tuple[Path, bytes]:
        data = os.urandom(size)
        path = incoming / f"download-{next(counter)}"
        path.write_bytes(data)
        return path, data

    return make


async def read_all(storage: BlobStorage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.open_range(key, start, end)])


async def test_put_file_then_read_back_same_sha256(storage: ObjectStorage, make_file: MakeFile) -> None:
    path, data = make_file(700_000)
    key = blob_key(hashlib.sha256(data).hexdigest())

    await storage.put_file(key, path)

    assert not path.exists(), "put_file takes ownership of the source file"
    chunks = [chunk async for chunk in storage.open_range(key, 0, None)]
    assert all(chunks)
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == key.rsplit("/", 1)[1]
    assert await storage.size(key) == len(data)
    assert await storage.exists(key)


@pytest.mark.parametrize("size", [0, 1, 65_536])
async def test_put_bytes_then_read_back(storage: ObjectStorage, size: int) -> None:
    data = os.urandom(size)
    key = blob_key(hashlib.sha256(data).hexdigest())

    await storage.put_bytes(key, data)
    await storage.put_bytes(key, data)  # the same bytes again: replaced, not an error

    assert await read_all(storage, key) == data
    assert await storage.size(key) == size
    # Listed once, with no part file left beside it.
    assert [k async for k in storage.list_keys("sha256/")] == [key]


async def test_open_range_partial_ranges(storage: ObjectStorage, make_file: MakeFile) -> None:
    path, data = make_file(300_000)
    key = "ranges/blob"
    await storage.put_file(key, path)

    assert await read_all(storage, key, 0, 1) == data[:1]
    assert await read_all(storage, key, 1000, 250_000) == data[1000:250_000]
    assert await read_all(storage, key, 299_999) == data[299_999:]
    assert await read_all(storage, key, 123_456, None) == data[123_456:]
    assert await read_all(storage, key, 290_000, 10**9) == data[290_000:], "end is clipped"
    assert await read_all(storage, key, 500, 500) == b""


async def test_open_range_rejects_bad_ranges(storage: ObjectStorage, make_file: MakeFile) -> None:
    path, _ = make_file(10)
    await storage.put_file("small", path)

    with pytest.raises(ValueError, match="invalid byte range"):
        await read_all(storage, "small", -1, None)
    with pytest.raises(ValueError, match="invalid byte range"):
        await read_all(storage, "small", 5, 4)
    with pytest.raises(StorageError):
        await read_all(storage, "small", 10, None)


async def test_empty_blob(storage: ObjectStorage, make_file: MakeFile) -> None:
    path, _ = make_file(0)
    await storage.put_file("empty", path)

    assert await storage.size("empty") == 0
    assert await read_all(storage, "empty") == b""


async def test_absent_blob(storage: ObjectStorage) -> None:
    key = blob_key("0" * 64)

    assert await storage.size(key) is None
    assert not await storage.exists(key)
    with pytest.raises(BlobNotFoundError):
        await read_all(storage, key)
    with pytest.raises(BlobNotFoundError):
        await read_all(storage, key, 3, 3)
    await storage.delete(key)


async def test_delete(storage: ObjectStorage, make_file: MakeFile) -> None:
    path, _ = make_file(1000)
    await storage.put_file("to/delete", path)

    await storage.delete("to/delete")

    assert not await storage.exists("to/delete")
    await storage.delete("to/delete")


async def test_put_file_replaces_existing_blob(storage: ObjectStorage, make_file: MakeFile) -> None:
    first, _ = make_file(100)
    second, data = make_file(200)

    await storage.put_file("same/key", first)
    await storage.put_file("same/key", second)

    assert await read_all(storage, "same/key") == data


async def test_list_keys_by_string_prefix(storage: ObjectStorage, make_file: MakeFile) -> None:
    keys = [blob_key("ab" * 32), blob_key("abcd" + "0" * 60), blob_key("ff" * 32), "other/x"]
    for key in keys:
        path, _ = make_file(10)
        await storage.put_file(key, path)

    async def listed(prefix: str) -> set[str]:
        return {key async for key in storage.list_keys(prefix)}

    assert await listed("") == set(keys)
    assert await listed("sha256/") == set(keys[:3])
    assert await listed("sha256/ab/") == set(keys[:2])
    assert await listed("sha256/a") == set(keys[:2])
    assert await listed("sha256/ab/ab/") == {keys[0]}
    assert await listed("sha256/ff/ff/" + "f" * 63) == {keys[2]}
    assert await listed("oth") == {"other/x"}
    assert await listed("nothing/") == set()


async def test_large_file_streams_through_multipart(storage: ObjectStorage, make_file: MakeFile) -> None:
    # Over obstore's 5 MiB part size: S3 and a cross-device local put use multipart.
    path, data = make_file(12 * 1024 * 1024)

    await storage.put_file("large", path)

    digest = hashlib.sha256()
    async for chunk in storage.open_range("large"):
        assert len(chunk) <= 12 * 1024 * 1024
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert await storage.size("large") == len(data)


async def test_check_passes_on_reachable_store(storage: ObjectStorage) -> None:
    await storage.check()


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/", "sp ace", "a#1", "é"])
async def test_malformed_keys_are_refused(key: str) -> None:
    storage = open_storage("memory://")

    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.exists(key)


def test_blob_key_is_content_address() -> None:
    digest = hashlib.sha256(b"hello").hexdigest()

    assert blob_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert blob_key(digest.upper()) == blob_key(digest)
    with pytest.raises(ValueError, match="SHA-256"):
        blob_key("abc")
    with pytest.raises(ValueError, match="SHA-256"):
        blob_key("g" * 64)


# Local folder


async def test_local_put_file_renames_20_mb_without_copy(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    incoming = tmp_path / "spool"
    incoming.mkdir()
    source = incoming / "download"
    with source.open("wb") as out:
        for _ in range(20):
            out.write(os.urandom(1024 * 1024))
    inode = source.stat().st_ino
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    key = blob_key(digest)

    await storage.put_file(key, source)

    stored = root.joinpath(*key.split("/"))
    assert stored.stat().st_ino == inode, "the file was moved, not copied"
    assert not source.exists()
    assert list(incoming.iterdir()) == []
    assert [p for p in root.rglob("*") if p.is_file()] == [stored]
    assert await storage.size(key) == 20 * 1024 * 1024
    read_back = hashlib.sha256()
    async for chunk in storage.open_range(key):
        read_back.update(chunk)
    assert read_back.hexdigest() == digest


class _FlushedFiles(Flush):
    """fsyncs as the store's own would, and notes which files were flushed and whether the
    blob already had its name then (it must not: data first, then the name)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.flushed: list[tuple[Path, bool]] = []

    def files(self, paths: Sequence[Path]) -> None:
        self.flushed.extend((path, self.target.exists()) for path in paths)
        super().files(paths)


async def test_local_put_file_from_another_file_system_stores_a_flushed_copy(
    tmp_path: Path, other_file_system: Path
) -> None:
    # A spool folder on another file system (a tmpfs, say): rename(2) cannot
    # reach the store, and a copy must be as durable as a moved file.
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    target = root / "moved" / "elsewhere"
    flush = _FlushedFiles(target)
    storage._commits = GroupCommit(flush, storage._parts_folder)
    data = os.urandom(6 * 1024 * 1024)
    path = other_file_system / "download"
    path.write_bytes(data)

    await storage.put_file("moved/elsewhere", path)

    assert target.read_bytes() == data
    assert not path.exists()
    assert [p.name for p in root.rglob("*") if p.is_file()] == ["elsewhere"]
    copies = [(p, named) for p, named in flush.flushed if p.is_relative_to(root)]
    assert copies, f"the copy in the store was never flushed: {flush.flushed}"
    assert not any(named for _, named in copies), "the blob had its name before its bytes were flushed"


async def test_local_put_file_across_mounts_of_one_file_system_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two bind mounts of one file system have the same device number, and
    # rename(2) between them still fails with EXDEV.
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    path = tmp_path / "spool" / "download"
    path.parent.mkdir()
    path.write_bytes(b"from another mount")
    replace = os.replace

    def across_mounts(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == path:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", across_mounts)

    await storage.put_file("k/blob", path)

    assert (root / "k" / "blob").read_bytes() == b"from another mount"
    assert not path.exists()
    assert [p.name for p in root.rglob("*") if p.is_file()] == ["blob"]


async def test_local_put_file_whose_copy_cannot_be_placed_keeps_the_source_and_no_copy(
    tmp_path: Path, other_file_system: Path
) -> None:
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    (root / "k").mkdir(parents=True)
    (root / "k" / "blob").mkdir()  # a folder where the blob must go
    path = other_file_system / "download"
    path.write_bytes(b"kept")

    with pytest.raises(StorageError, match="could not store"):
        await storage.put_file("k/blob", path)

    assert path.read_bytes() == b"kept"
    assert [p for p in root.rglob("*") if p.is_file()] == []


async def test_local_put_file_of_missing_source_is_storage_error(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "blobs").as_uri())

    with pytest.raises(StorageError, match="could not store"):
        await storage.put_file("k", tmp_path / "nope")


async def test_local_put_bytes_leaves_only_the_blob(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    data = b"small file"
    key = blob_key(hashlib.sha256(data).hexdigest())

    await storage.put_bytes(key, data)

    stored = [p for p in root.rglob("*") if p.is_file()]
    assert stored == [root.joinpath(*key.split("/"))]
    assert stored[0].read_bytes() == data


async def test_local_put_bytes_into_unwritable_folder_is_storage_error(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    (root / "sha256").write_text("a file where a folder must go")

    with pytest.raises(StorageError, match="could not store"):
        await storage.put_bytes(blob_key("ab" * 32), b"x")
    assert [p.name for p in root.rglob("*") if p.is_file()] == ["sha256"]  # no part file left


@pytest.mark.parametrize("how", ["put_bytes", "put_file"])
async def test_local_content_addressed_blob_already_stored_is_refreshed_not_rewritten(
    tmp_path: Path, how: str
) -> None:
    storage = open_storage((tmp_path / "blobs").as_uri())
    data = os.urandom(70_000)
    key = blob_key(hashlib.sha256(data).hexdigest())
    await storage.put_bytes(key, data)
    blob = tmp_path / "blobs" / key
    os.utime(blob, (1_000_000_000, 1_000_000_000))  # written in 2001
    inode = blob.stat().st_ino

    if how == "put_bytes":
        await storage.put_bytes(key, data, content_addressed=True)
    else:
        source = tmp_path / "spooled"
        source.write_bytes(data)
        await storage.put_file(key, source, content_addressed=True)
        assert not source.exists(), "put_file takes ownership of the source file"

    assert blob.stat().st_ino == inode, "the stored blob was written again"
    assert blob.stat().st_mtime > 1_000_000_000 + 3600, "its time of writing was not refreshed"
    assert blob.read_bytes() == data


async def test_local_content_addressed_blob_is_rewritten_when_the_store_does_not_fsync(
    tmp_path: Path,
) -> None:
    # Without fsync a blob of the right size may hold the wrong bytes after a
    # power loss; writing it again is what heals it.
    storage = open_storage((tmp_path / "blobs").as_uri(), {"fsync": "false"})
    data = b"the whole content"
    key = blob_key(hashlib.sha256(data).hexdigest())
    blob = tmp_path / "blobs" / key
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"X" * len(data))  # same size, other bytes

    await storage.put_bytes(key, data, content_addressed=True)

    assert blob.read_bytes() == data


async def test_local_content_addressed_blob_of_another_size_is_replaced(tmp_path: Path) -> None:
    # A blob cut short (written by hand, or a bug) under the key is not taken for the content.
    storage = open_storage((tmp_path / "blobs").as_uri())
    data = b"the whole content"
    key = blob_key(hashlib.sha256(data).hexdigest())
    await storage.put_bytes(key, data[:5])

    await storage.put_bytes(key, data, content_addressed=True)

    assert await read_all(storage, key) == data


async def test_local_check_fails_when_folder_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())
    root.rmdir()

    with pytest.raises(StorageError, match="does not exist"):
        await storage.check()


async def test_local_check_fails_when_the_folder_refuses_writes() -> None:
    # Root's os.access says this folder is writable, yet procfs creates no file in it,
    # for root or anyone: as a read-only mount or a full disk, only a real write tells.
    storage = open_storage(Path("/proc/self/fdinfo").as_uri())

    with pytest.raises(StorageNotWritableError, match="refuses writes"):
        await storage.check()


async def test_local_check_leaves_nothing_in_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    storage = open_storage(root.as_uri())

    await storage.check()

    assert list(root.iterdir()) == []


def test_open_storage_file_url_creates_folder(tmp_path: Path) -> None:
    root = tmp_path / "a b" / "blobs"

    storage = open_storage(root.as_uri(), {"fsync": "false"})

    assert root.is_dir()
    assert storage.local_root == root


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("ftp://host/x", None),
        ("file://relative/path", None),
        ("file:///tmp/x", {"endpoint": "http://127.0.0.1:1"}),
        ("file:///tmp/x", {"fsync": "maybe"}),
        ("memory://", {"region": "us-east-1"}),
        ("s3://bucket/p", {"no_such_option": "1"}),
        ("s3:///p", None),
    ],
)
def test_open_storage_rejects_bad_settings(url: str, options: dict[str, str] | None) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        open_storage(url, options)


# S3


@pytest.mark.s3
async def test_s3_check_on_missing_bucket_raises(s3_bucket: S3Bucket) -> None:  # noqa: F811
    storage = open_storage("s3://no-such-bucket-fileimport/x", s3_bucket.options)

    with pytest.raises(StorageError, match=r"NoSuchBucket|404"):
        await storage.check()


@pytest.mark.s3
async def test_s3_check_on_unreachable_endpoint_times_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = obstore_options(f"http://127.0.0.1:{port}")
    store = S3Store.from_url(
        "s3://bucket/x",
        endpoint=options["endpoint"],
        region=options["region"],
        access_key_id=options["access_key_id"],
        secret_access_key=options["secret_access_key"],
        client_options={"allow_http": True},
    )
    storage = ObjectStorage(store, check_timeout=0.5)

    with pytest.raises(StorageError):
        await storage.check()


@pytest.mark.s3
async def test_s3_keys_live_under_the_url_prefix(
    s3_bucket: S3Bucket,  # noqa: F811
    make_file: MakeFile,
) -> None:
    prefixed = open_storage(s3_bucket.url_for("tenant-a/blobs"), s3_bucket.options)
    whole_bucket = open_storage(s3_bucket.url, s3_bucket.options)
    path, data = make_file(50)

    await prefixed.put_file("k/1", path)

    assert await read_all(whole_bucket, "tenant-a/blobs/k/1") == data
    assert [key async for key in prefixed.list_keys("k/")] == ["k/1"]
