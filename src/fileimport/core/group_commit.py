"""Group commit for blobs written to a local folder.

Storing one small file durably is a handful of system calls (create, write,
fsync, rename, fsync of the folder) in a worker thread. Done one file per
thread hop, 16 at once, the threads spent their time handing the GIL to each
other: bench case (a) measured 60 context switches per file. `GroupCommit`
writes every blob that arrives while a batch is in its thread as the next
batch, in one hop, the way a database flushes the log records of concurrent
transactions in one write (PostgreSQL's ``commit_delay``, InnoDB's group
commit). The batch is made durable with one ``syncfs(2)`` of the store's file
system before its blobs are renamed into place and one after (Linux 5.8 and
later, where ``syncfs`` reports write-back errors; PostgreSQL's
``recovery_init_sync_method=syncfs`` relies on the same), or, elsewhere or when
turned off, with an ``fsync`` of every file and folder as before.

The order is the classic one for an atomic, durable replace (the data is on
disk before the name that points at it, and the name before the caller is
told): write part files, flush, rename, flush. Case (a) went from 60 to 15-18
context switches per file and from 1.0-1.3 to 0.5-0.7 ms of system CPU per
file (`bench/README.md`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import platform
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread

__all__ = ["Flush", "GroupCommit", "LocalWrite", "commit_writes", "syncfs_flush"]

MAX_BATCH = 256
"""Blobs per batch at most; more waiting ones go in the next batch."""


@dataclass
class LocalWrite:
    """One blob to place at ``target``: ``data`` to write, or the file ``source`` to move.

    ``content_addressed``: the target's name is its content's SHA-256, so a
    file already there with the same size is kept and only its time of
    writing refreshed (see `fileimport.core.storage.BlobStorage.put_file`);
    only where writes are flushed, since without a flush a file of the
    right size may hold the wrong bytes after a power loss.
    """

    target: Path
    data: bytes | None = None
    source: Path | None = None
    content_addressed: bool = False
    error: OSError | None = field(default=None, init=False)
    _staged: Path | None = field(default=None, init=False)


class Flush:
    """How a batch is made durable: the files first, then the folders that name them.

    This one fsyncs every file and folder (any POSIX system). Each method
    raises ``OSError``; a failure fails every blob of the batch.
    """

    def files(self, paths: Sequence[Path]) -> None:
        """Flush the data of ``paths`` (regular files) to disk."""
        for path in paths:
            _fsync_path(path)

    def folders(self, paths: Iterable[Path]) -> None:
        """Flush the entries of ``paths`` (folders), so renames into them survive a crash."""
        for path in dict.fromkeys(paths):
            _fsync_path(path, directory=True)


class _SyncfsFlush(Flush):
    """One ``syncfs(2)`` of the file system holding ``root`` for all files, and one for all folders."""

    def __init__(self, root: Path, syncfs: Callable[[int], int]) -> None:
        self._root = root
        self._syncfs = syncfs

    def files(self, paths: Sequence[Path]) -> None:
        if paths:
            self._sync()

    def folders(self, paths: Iterable[Path]) -> None:
        if any(True for _ in paths):
            self._sync()

    def _sync(self) -> None:
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if self._syncfs(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
        finally:
            os.close(fd)


def syncfs_flush(root: Path) -> Flush | None:
    """A `Flush` by ``syncfs(2)`` of the file system holding ``root``; None where unsupported.

    Supported on Linux from 5.8, the first kernel whose ``syncfs`` reports
    write-back errors (``errseq`` on the superblock) instead of always
    returning 0, with a C library that has it (glibc 2.14, musl).
    """
    if platform.system() != "Linux" or _kernel_version() < (5, 8):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)  # calls release the GIL
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return _SyncfsFlush(root, syncfs)


def _kernel_version() -> tuple[int, int]:
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_writes(writes: Sequence[LocalWrite], flush: Flush | None, parts: Path) -> None:
    """Place every blob of ``writes``, durably when ``flush`` is given; sets each one's ``error``.

    Bytes are written to part files in the folder ``parts`` (this process's
    own, on the targets' file system: see `ObjectStorage`), then renamed to
    their targets. Never raises for a blob's own failure (its ``error`` says
    it, and nothing of it is left but, for a move, its ``source``); a failed
    flush is every blob's error. On success a moved ``source`` is gone.
    """
    if any(w.data is not None for w in writes):
        try:
            parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            for write in writes:
                write.error = exc
            return
    for write in writes:
        _capture(write, _stage, write, flush is not None, parts)
    staged = [w for w in writes if w._staged is not None]
    if flush is not None and staged:
        try:
            flush.files([w._staged for w in staged if w._staged is not None])
        except OSError as exc:
            for write in staged:
                _fail(write, exc)
            staged = []
    for write in staged:
        _capture(write, _rename, write)
    placed = [w for w in writes if w.error is None]
    if flush is not None and placed:
        try:
            flush.folders(w.target.parent for w in placed)
        except OSError as exc:
            for write in placed:
                write.error = exc


def _capture(write: LocalWrite, step: Callable[..., None], *args: object) -> None:
    try:
        step(*args)
    except OSError as exc:
        _fail(write, exc)


def _fail(write: LocalWrite, exc: OSError) -> None:
    write.error = exc
    if write._staged is not None and write._staged != write.source:
        write._staged.unlink(missing_ok=True)
    write._staged = None


def _stage(write: LocalWrite, flushed: bool, parts: Path) -> None:
    """Write the part file (or check the file to move); or refresh a blob already stored."""
    data = write.data
    if write.source is not None:
        source_stat = os.lstat(write.source)
        if not stat.S_ISREG(source_stat.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(write.source))
        size = source_stat.st_size
    else:
        assert data is not None  # noqa: S101 - a LocalWrite has data or a source
        size = len(data)
    if write.content_addressed and flushed and _refresh_if_stored(write.target, size):
        if write.source is not None:
            write.source.unlink()
        return
    write.target.parent.mkdir(parents=True, exist_ok=True)
    if data is None:  # a file to move: it is its own part file
        write._staged = write.source
        return
    part = parts / f"{write.target.name}.{secrets.token_hex(6)}"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    write._staged = part
    try:
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
    finally:
        os.close(fd)


def _rename(write: LocalWrite) -> None:
    assert write._staged is not None  # noqa: S101 - only staged writes are renamed
    os.replace(write._staged, write.target)
    write._staged = None


def _refresh_if_stored(target: Path, size: int) -> bool:
    """True when ``target`` holds ``size`` bytes already: its time of writing is set to now.

    Only for content-addressed keys in a store that flushes what it writes:
    the same key means the same bytes, and a blob under its final name was
    flushed before the rename that put it there. That rename may not be on
    disk yet (its writer flushes the folder next): the batch's folder flush
    covers it before the caller relies on the blob.
    """
    try:
        if os.stat(target).st_size != size:
            return False
        os.utime(target)
    except FileNotFoundError:  # never stored, or a sweep is removing it: store it
        return False
    return True


class GroupCommit:
    """Runs `LocalWrite`s in batches: those that arrive while a batch runs form the next one.

    Each batch is one worker-thread hop (`commit_writes`) with one flush;
    ``flush`` None writes without flushing. ``parts`` gives the folder for
    part files (called per batch, so a forked process gets its own). Bound
    to the event loop of its first use; a new loop (a test's) gets a fresh
    queue. A caller cancelled
    while its blob is in a running batch is let go at once; the blob may
    still be placed (content-addressed blobs nobody references are swept).
    """

    def __init__(self, flush: Flush | None, parts: Callable[[], Path]) -> None:
        self._flush = flush
        self._parts = parts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[LocalWrite, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def write(self, write: LocalWrite) -> None:
        """Place ``write``'s blob with the next batch. Raises its ``OSError``."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._waiting, self._committer = loop, [], None
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((write, done))
        if self._committer is None:
            self._committer = loop.create_task(self._commit_while_waiting())
        await done

    async def _commit_while_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                writes = [write for write, _ in batch]
                try:
                    await anyio.to_thread.run_sync(commit_writes, writes, self._flush, self._parts())
                except Exception as exc:  # a bug: the batch's callers get it, later batches go on
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                except BaseException:  # cancelled: the loop is shutting down
                    for _, done in batch + self._waiting:
                        done.cancel()
                    raise
                for write, done in batch:
                    if done.done():  # its caller was cancelled
                        continue
                    if write.error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(write.error)
        finally:
            self._committer = None
