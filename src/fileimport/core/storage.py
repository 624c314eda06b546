"""Blob storage: a local folder, an S3-compatible bucket or memory, behind one interface.

Blobs are addressed by keys made of ``/``-separated segments of ASCII letters,
digits, ``.``, ``_`` and ``-`` (see `blob_key` for the content address used by
the media library). All operations go through obstore, whose calls run on its
own Tokio runtime and are awaited from asyncio; file system work that obstore
does not do (the local rename fast path) runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread
import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import LocalStore, MemoryStore, S3Store

from fileimport.core.group_commit import Flush, GroupCommit, LocalWrite, syncfs_flush
from fileimport.core.processes import process_alive, remove_folders_of_dead_processes

if TYPE_CHECKING:  # types of obstore's stubs only
    from obstore import GetOptions, ObjectMeta
    from obstore.store import ClientConfig, ObjectStore, S3Config

__all__ = [
    "BlobNotFoundError",
    "BlobStorage",
    "ObjectStorage",
    "StorageError",
    "StorageNotWritableError",
    "blob_key",
    "open_storage",
]

DEFAULT_CHUNK_BYTES = 256 * 1024
"""Minimum chunk size of `ObjectStorage.open_range` streams, in bytes."""

DEFAULT_CHECK_TIMEOUT = 5.0
"""Seconds `ObjectStorage.check` waits for the store before declaring it unreachable."""

_KEY_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

# obstore's ClientConfig keys (HTTP client settings); every other option is S3 config.
_CLIENT_OPTION_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "root_certificate",
        "timeout",
        "user_agent",
    }
)


class StorageError(Exception):
    """The blob store could not be reached or refused an operation."""


class StorageNotWritableError(StorageError):
    """A local store's folder takes no new file: a read-only file system, a full disk, no permission."""


class BlobNotFoundError(StorageError):
    """No blob is stored under the requested key."""


@dataclass(frozen=True)
class StoredBlob:
    """A stored object: its key, size in bytes and when it was last written (UTC)."""

    key: str
    size: int
    last_modified: datetime


class BlobStorage(Protocol):
    """Where imported files' bytes live, addressed by key.

    Implementations are safe to share between tasks of one event loop. Keys are
    validated by `ObjectStorage`'s rules (``ValueError`` for a malformed key).
    """

    async def put_file(self, key: str, path: Path, *, content_addressed: bool = False) -> None:
        """Store the local file at ``path`` under ``key``, replacing any blob there.

        Takes ownership of the file: once this returns, ``path`` no longer exists
        (it was moved into place or uploaded and then deleted). On failure the
        file is left where it was, unless only the last flush to disk failed,
        when it is under the key already (unflushed); removing ``path`` if it
        is still there is the caller's part. Raises `StorageError`.

        ``content_addressed``: the key names the bytes (their SHA-256), so a
        blob already stored under it with the same size is kept, and only its
        time of writing is refreshed, as a write would (which keeps it out of
        reach of an orphan sweep); a local store that flushes its writes
        (``fsync``, the default) then skips writing the bytes again. Other
        stores always upload.
        """
        ...

    async def put_bytes(self, key: str, data: bytes, *, content_addressed: bool = False) -> None:
        """Store ``data`` under ``key``, replacing any blob there. Raises `StorageError`.

        For small files that were never spooled to disk; as durable as
        `put_file`, and ``content_addressed`` means the same as there.
        """
        ...

    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``. Raises `StorageError`."""
        ...

    async def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None when absent. Raises `StorageError`."""
        ...

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of the blob (``end`` None: to its end) in chunks.

        Raises `BlobNotFoundError`, `StorageError`, or ``ValueError`` for a
        negative ``start`` or ``end < start``.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob under ``key``; an absent blob is not an error."""
        ...

    async def delete_if_written_before(self, key: str, cutoff: datetime) -> bool:
        """Remove the blob unless it was written at or after ``cutoff``; True if removed."""
        ...

    async def restore_set_aside(self, key: str) -> bool:
        """Put back a blob that a sweep killed mid-deletion left aside (`is_set_aside` keys); True if so."""
        ...

    async def remove_abandoned_parts(self) -> int:
        """Remove part files that killed processes of this host left; how many (local stores only)."""
        ...

    def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key starting with ``prefix`` (plain string prefix), in no set order."""
        ...

    def list_blobs(self, prefix: str = "") -> AsyncIterator[StoredBlob]:
        """Like `list_keys`, with each blob's size and time of writing."""
        ...

    async def check(self) -> None:
        """Readiness probe: raise `StorageError` when the store cannot be used."""
        ...

    def without_root(self, message: str) -> str:
        """``message`` (an error's) with a local store's folder written ``<storage folder>``."""
        ...

    async def close(self) -> None:
        """Release connections; the storage must not be used afterwards."""
        ...


BLOB_PREFIX = "sha256/"


def blob_key(sha256_hex: str) -> str:
    """Content address of a blob: ``sha256/ab/cd/<64 hex digits>``.

    ``sha256_hex`` is the SHA-256 of the blob's bytes as 64 hexadecimal digits
    (either case; the key uses lower case). The two 2-digit levels keep
    directories of a local store small. Raises ``ValueError`` for anything else.
    """
    digest = sha256_hex.lower()
    if not _SHA256_RE.fullmatch(digest):
        raise ValueError(f"not a SHA-256 hex digest: {sha256_hex!r}")
    return f"{BLOB_PREFIX}{digest[:2]}/{digest[2:4]}/{digest}"


def _check_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid storage key: {key!r}")


def _storage_error(action: str, key: str, exc: BaseException) -> StorageError:
    # An OSError's own words, without the server's paths (the message reaches
    # API clients in a file's reason); obstore messages carry a multi-line
    # debug dump after the first line. The whole error is the cause, for logs.
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    else:
        detail = str(exc).split("\n", 1)[0].strip() or type(exc).__name__
    return StorageError(f"could not {action} {key!r}: {detail}")


_SET_ASIDE = re.compile(r"\.(?P<name>.+)\.deleting-(?P<pid>\d+)")
"""Name of a blob that `_delete_local_if_before` moved aside (`_set_aside_name`)."""


def _set_aside_name(path: Path) -> Path:
    """Where this process's sweep moves ``path`` before deleting it."""
    return path.with_name(f".{path.name}.deleting-{os.getpid()}")


def is_set_aside(key: str) -> bool:
    """Whether ``key`` names a blob that a sweep moved aside (``.<name>.deleting-<pid>``)."""
    return _SET_ASIDE.fullmatch(key.rsplit("/", 1)[-1]) is not None


def _restore_set_aside(aside: Path) -> bool:
    """Put a blob that a killed sweep moved aside back under its name; True if ``aside`` was one.

    The sweep may have moved it just after an import refreshed it, so it
    cannot be dropped: it goes back unless the name holds a blob again (the
    same bytes, written since), and a later sweep decides on it afresh.
    """
    found = _SET_ASIDE.fullmatch(aside.name)
    if found is None or process_alive(int(found["pid"])):
        return False
    target = aside.with_name(found["name"])
    try:
        if target.exists():
            aside.unlink()
        else:
            os.replace(aside, target)
    except FileNotFoundError:  # another process restored it first
        pass
    return True


def _delete_local_if_before(path: Path, cutoff: float) -> bool:
    aside = _set_aside_name(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if os.stat(aside).st_mtime >= cutoff:
        # Written again since it was listed: an import is about to use it.
        os.replace(aside, path)
        return False
    aside.unlink()
    return True


PARTS_FOLDER = ".parts"
"""Folder under a local store's root for the part files of blobs being written (`ObjectStorage`)."""

_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def _remove_abandoned_parts(parts_root: Path) -> int:
    def pid_of(name: str) -> int | None:  # <host>-<pid>, this host's only
        host, _, pid = name.rpartition("-")
        return int(pid) if host == _HOST and pid.isdigit() else None

    return remove_folders_of_dead_processes(parts_root, pid_of)


_PROBE_PREFIX = ".readyz-"
"""Names of `_check_local_root`'s probe files (``.readyz-<pid>-<random>``) in the store's root folder.

Blobs live under `BLOB_PREFIX` and sweeps list nothing else, so a probe that a
killed process left behind is never taken for a blob (nor for a set-aside one).
"""


def _check_local_root(root: Path) -> None:
    """Create, write and remove a probe file in ``root``.

    ``os.access`` answers from the permission bits, which root always passes;
    only a write shows a full disk, an exhausted quota, a folder root may not
    write to or a file system that takes no new file. Raises `StorageError`
    when ``root`` is missing, `StorageNotWritableError` (its message without
    the server's path, for ``/readyz``) when the write fails.
    """
    if not root.is_dir():
        # No path in the message: /readyz shows it to anyone (FILEIMPORT_STORAGE_URL names it).
        raise StorageError(
            "the storage folder is a file, not a folder"
            if root.exists()
            else "the storage folder does not exist"
        )
    probe = root / f"{_PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        with probe.open("xb", buffering=0) as file:
            try:
                file.write(b"ready\n")  # a full disk may still take an empty file, not a byte
            finally:
                probe.unlink()
    except OSError as exc:
        detail = exc.strerror or type(exc).__name__
        raise StorageNotWritableError(f"the storage folder refuses writes: {detail}") from exc


class ObjectStorage:
    """`BlobStorage` over an obstore store (`LocalStore`, `S3Store`, `MemoryStore`).

    For a `LocalStore`, `put_file` renames the file into place when it is on the
    same mount as the store's folder (no copy, however large the file), and
    otherwise copies it beside the store first (`_put_copy`); with ``fsync``
    (the default) the blob is on disk before the call returns either way
    (`fileimport.core.group_commit`). Uploads to other stores stream the file
    (multipart above 5 MiB), never holding it whole in memory.

    Args:
        store: the obstore store; keys are relative to its prefix.
        chunk_bytes: minimum size of the chunks `open_range` yields (the last
            one may be smaller), in bytes.
        check_timeout: seconds `check` waits before raising `StorageError`.
        fsync: for a local store, flush each stored file and its folder
            entry to disk before returning, so a stored blob survives a crash.
        syncfs: for a local store that flushes, flush each batch of blobs
            (`fileimport.core.group_commit`) with one ``syncfs(2)`` before the
            renames and one after, instead of an ``fsync`` per file and
            folder, where the system supports it (Linux 5.8+). ``syncfs``
            also flushes what other programs wrote to the same file system:
            turn it off when the folder shares one with busy writers.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
        fsync: bool = True,
        syncfs: bool = True,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be at least 1")
        self._store = store
        self._chunk_bytes = chunk_bytes
        self._check_timeout = check_timeout
        self._local_root: Path | None = None
        self._commits: GroupCommit | None = None
        if isinstance(store, LocalStore):
            self._local_root = store.prefix or Path("/")
            flush = ((syncfs_flush(self._local_root) if syncfs else None) or Flush()) if fsync else None
            self._commits = GroupCommit(flush, self._parts_folder)

    def _parts_folder(self) -> Path:
        """This process's folder for part files: ``<root>/.parts/<host>-<pid>``.

        Beside the blobs (the same file system, for the rename) but outside
        ``sha256/``, and one per process, so that `remove_abandoned_parts`
        can drop what a killed process left without waiting for it to age.
        """
        assert self._local_root is not None  # noqa: S101 - local stores only
        return self._local_root / PARTS_FOLDER / f"{_HOST}-{os.getpid()}"

    def without_root(self, message: str) -> str:
        """``message`` (an error's) with a local store's folder written ``<storage folder>``:
        for answers to clients, who have no business with the server's paths."""
        if self._local_root is None:
            return message
        return message.replace(str(self._local_root).rstrip("/"), "<storage folder>")

    async def remove_abandoned_parts(self) -> int:
        """Remove the part-file folders of this host's processes that no longer run; files removed.

        A process killed mid-batch leaves part files that no entry will ever
        reference. Only this host's folders are looked at (the pid says
        nothing of another host's processes); no-op for other stores.
        Raises `StorageError`.
        """
        if self._local_root is None:
            return 0
        try:
            return await anyio.to_thread.run_sync(_remove_abandoned_parts, self._local_root / PARTS_FOLDER)
        except OSError as exc:
            raise _storage_error("clean", PARTS_FOLDER, exc) from exc

    @property
    def local_root(self) -> Path | None:
        """The folder of a local store, or None for other stores.

        Callers that stage downloads in a folder on the same file system (for
        example a sibling of this one) get the rename fast path in `put_file`.
        """
        return self._local_root

    async def put_file(self, key: str, path: Path, *, content_addressed: bool = False) -> None:
        """Store the file at ``path`` under ``key``; see `BlobStorage.put_file`.

        Raises `StorageError` when the file cannot be read or the store written,
        ``ValueError`` for a malformed key.
        """
        _check_key(key)
        if self._local_root is not None and self._commits is not None:
            target = self._local_root.joinpath(*key.split("/"))
            try:
                await self._commits.write(
                    LocalWrite(target, source=path, content_addressed=content_addressed)
                )
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise _storage_error("store", key, exc) from exc
            else:
                return
            await self._put_copy(key, target, path, content_addressed)
            return
        try:
            await obstore.put_async(self._store, key, path)
        except (ObstoreError, OSError) as exc:
            raise _storage_error("store", key, exc) from exc
        try:
            await anyio.to_thread.run_sync(path.unlink)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _storage_error("remove the uploaded source of", key, exc) from exc

    async def _put_copy(self, key: str, target: Path, path: Path, content_addressed: bool) -> None:
        """`put_file` for a file that cannot be renamed into the store (EXDEV).

        ``path`` is on another mount: a spool folder on another file system, or
        a bind mount of the same one (same device number, and still EXDEV,
        rename(2)). It is copied beside the store's part files in a thread hop
        of its own, not in a batch (a copy of gigabytes would hold every other
        blob up), and the copy is placed like any moved file: flushed, renamed,
        its folder flushed. Then ``path`` is removed. Until 2026-11-30 this fell
        back to obstore's put, which does not flush.
        """
        assert self._commits is not None  # noqa: S101 - local stores only
        try:
            copy = await anyio.to_thread.run_sync(_copy_beside, path, self._parts_folder())
        except OSError as exc:
            raise _storage_error("store", key, exc) from exc
        try:
            await self._commits.write(LocalWrite(target, source=copy, content_addressed=content_addressed))
        except OSError as exc:
            await anyio.to_thread.run_sync(_unlink_quietly, copy)
            raise _storage_error("store", key, exc) from exc
        # Stored: the original goes, as a moved file's name does (not the store's failure if it stays).
        await anyio.to_thread.run_sync(_unlink_quietly, path)

    async def put_bytes(self, key: str, data: bytes, *, content_addressed: bool = False) -> None:
        """Store ``data`` under ``key``; see `BlobStorage.put_bytes`.

        A local store writes it with the next batch of its group commit
        (flushed to disk when ``fsync``); other stores take one PUT. Raises
        `StorageError`, ``ValueError`` for a malformed key.
        """
        _check_key(key)
        try:
            if self._local_root is not None and self._commits is not None:
                target = self._local_root.joinpath(*key.split("/"))
                await self._commits.write(LocalWrite(target, data=data, content_addressed=content_addressed))
            else:
                await obstore.put_async(self._store, key, data)
        except (ObstoreError, OSError) as exc:
            raise _storage_error("store", key, exc) from exc

    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``. Raises `StorageError`."""
        return await self.size(key) is not None

    async def size(self, key: str) -> int | None:
        """The blob's size in bytes (one HEAD request), or None when absent.

        Raises `StorageError`.
        """
        _check_key(key)
        meta = await self._head(key)
        return None if meta is None else meta["size"]

    async def _head(self, key: str) -> ObjectMeta | None:
        """The blob's metadata (one HEAD request), None when absent; raises `StorageError`."""
        try:
            return await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        except (ObstoreError, OSError) as exc:
            raise _storage_error("look up", key, exc) from exc

    async def open_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of the blob, ``end`` exclusive, None for its end.

        Meant for HTTP Range responses (RFC 9110 §14): callers should first take
        `size` to answer 404/416 and to clamp ``end``; an ``end`` past the end of
        the blob is clipped to it. Chunks are at least ``chunk_bytes`` long except
        the last. Raises `BlobNotFoundError` when absent, `StorageError` when
        the store fails or ``start`` is at or past the end of a non-empty
        range, ``ValueError`` for ``start < 0`` or ``end < start``. Nothing is
        requested until the first chunk is awaited.
        """
        _check_key(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range [{start}, {end})")
        if end == start:
            if await self.size(key) is None:
                raise BlobNotFoundError(f"no blob stored under {key!r}")
            return
        options: GetOptions = {}
        if end is not None:
            options["range"] = (start, end)
        elif start > 0:
            options["range"] = {"offset": start}
        try:
            result = await obstore.get_async(self._store, key, options=options)
            async for chunk in result.stream(min_chunk_size=self._chunk_bytes):
                if chunk:
                    yield chunk
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob stored under {key!r}") from exc
        except (ObstoreError, OSError) as exc:
            raise _storage_error("read", key, exc) from exc

    async def delete(self, key: str) -> None:
        """Remove the blob under ``key``; absent is fine. Raises `StorageError`."""
        _check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            pass
        except (ObstoreError, OSError) as exc:
            raise _storage_error("delete", key, exc) from exc

    async def delete_if_written_before(self, key: str, cutoff: datetime) -> bool:
        """Remove the blob unless it was (re)written at or after ``cutoff``; True if removed.

        A local store moves the blob aside atomically first and looks at the
        moved file: when an import has just written the key again, it is put
        back, so a blob being imported is never lost to a sweep (and one that
        a killed sweep left aside is put back by `restore_set_aside`). Other stores
        check the time with a HEAD just before the DELETE (a window of one
        round trip). Raises `StorageError`.
        """
        _check_key(key)
        if self._local_root is not None:
            path = self._local_root.joinpath(*key.split("/"))
            try:
                return await anyio.to_thread.run_sync(_delete_local_if_before, path, cutoff.timestamp())
            except OSError as exc:
                raise _storage_error("delete", key, exc) from exc
        meta = await self._head(key)
        if meta is None or meta["last_modified"] >= cutoff:
            return False
        await self.delete(key)
        return True

    async def restore_set_aside(self, key: str) -> bool:
        """Put back the blob a sweep moved aside under ``key`` if that sweep's process is gone.

        Only a local store sets blobs aside (see `delete_if_written_before`):
        a sweep killed between moving one aside and deleting it leaves it as
        ``.<name>.deleting-<pid>``, and an import may have refreshed that
        blob just before, so it goes back under its name (or is dropped when
        the name holds the same bytes again). False for any other key, for a
        sweep still running, and for other stores. Raises `StorageError`.
        """
        if self._local_root is None or not is_set_aside(key):
            return False
        _check_key(key)
        path = self._local_root.joinpath(*key.split("/"))
        try:
            return await anyio.to_thread.run_sync(_restore_set_aside, path)
        except OSError as exc:
            raise _storage_error("restore", key, exc) from exc

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key that starts with ``prefix``, in no particular order (see `list_blobs`)."""
        async for blob in self.list_blobs(prefix):
            yield blob.key

    async def list_blobs(self, prefix: str = "") -> AsyncIterator[StoredBlob]:
        """Every blob whose key starts with ``prefix``, with size and time of writing, in no order.

        ``prefix`` is a plain string prefix (``"sha256/a"`` matches
        ``"sha256/ab/..."``). The store is listed from the last ``/`` of the
        prefix, so a prefix ending in ``/`` lists just that folder's subtree.
        Raises `StorageError`.
        """
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder:
            _check_key(folder)
        try:
            async for batch in obstore.list(self._store, folder or None, chunk_size=1000):
                for meta in batch:
                    if meta["path"].startswith(prefix):
                        yield StoredBlob(meta["path"], meta["size"], meta["last_modified"])
        except (ObstoreError, OSError) as exc:
            raise _storage_error("list", prefix, exc) from exc

    async def check(self) -> None:
        """Readiness probe: one listing request (and, for a local store, a probe file written and removed).

        Raises `StorageError` when the store is unreachable, refuses the
        credentials, the bucket or folder is missing, or no answer comes within
        ``check_timeout`` seconds; `StorageNotWritableError` when a local
        store's folder takes no new file.
        """
        if self._local_root is not None:
            await anyio.to_thread.run_sync(_check_local_root, self._local_root)
        try:
            with anyio.fail_after(self._check_timeout):
                await obstore.list_with_delimiter_async(self._store, None)
        except TimeoutError as exc:
            raise StorageError(f"storage did not answer within {self._check_timeout:g} seconds") from exc
        except (ObstoreError, OSError) as exc:
            raise _storage_error("list", "/", exc) from exc

    async def close(self) -> None:
        """Remove this process's part-file folder (local stores; a write still in it is one that
        cannot finish now). obstore pools its connections per store object: nothing else to release."""
        if self._local_root is not None:
            await anyio.to_thread.run_sync(partial(shutil.rmtree, self._parts_folder(), ignore_errors=True))


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"storage option {name!r} must be true or false, not {value!r}")


def open_storage(url: str, options: Mapping[str, str] | None = None) -> ObjectStorage:
    """Open the blob store named by ``url`` (``FILEIMPORT_STORAGE_URL``).

    - ``file:///abs/path``: a local folder, created if missing. Options
      ``fsync`` and ``syncfs`` (``true``/``false``, default true), see `ObjectStorage`.
    - ``s3://bucket/prefix``: an S3-compatible bucket, keys under ``prefix``.
      Options are obstore's S3 config (``endpoint``, ``region``,
      ``access_key_id``, ``secret_access_key``, ...) and HTTP client options
      (``allow_http``, ``timeout``, ``connect_timeout``, ...); what they do not
      set comes from the ``AWS_*`` environment variables, as obstore reads them.
    - ``memory://``: a new, empty in-memory store, for tests.

    Raises ``ValueError`` for an unsupported URL or invalid options. Does not
    contact the store; call `ObjectStorage.check` for that. Blocks briefly
    (creates the local folder).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    opts = {key.lower(): value for key, value in (options or {}).items()}
    if scheme == "file":
        if parts.netloc not in {"", "localhost"}:
            raise ValueError(f"file storage URL must name a local path: {url!r}")
        root = Path(unquote(parts.path))
        if not root.is_absolute():
            raise ValueError(f"file storage URL needs an absolute path: {url!r}")
        fsync = _parse_bool("fsync", opts.pop("fsync", "true"))
        syncfs = _parse_bool("syncfs", opts.pop("syncfs", "true"))
        if opts:
            raise ValueError(f"unknown options for file storage: {sorted(opts)}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create storage folder {str(root)!r}: {exc}") from exc
        return ObjectStorage(LocalStore(root), fsync=fsync, syncfs=syncfs)
    if scheme == "memory":
        if opts:
            raise ValueError(f"unknown options for memory storage: {sorted(opts)}")
        return ObjectStorage(MemoryStore())
    if scheme in {"s3", "s3a"}:
        if not parts.netloc:
            raise ValueError(f"S3 storage URL needs a bucket: {url!r}")
        client = {key: value for key, value in opts.items() if key in _CLIENT_OPTION_KEYS}
        config = {key: value for key, value in opts.items() if key not in _CLIENT_OPTION_KEYS}
        try:
            store = S3Store.from_url(
                url,
                config=cast("S3Config", config),
                client_options=cast("ClientConfig", client) if client else None,
            )
        except (ObstoreError, ValueError) as exc:
            detail = str(exc).split("\n", 1)[0]
            raise ValueError(f"invalid S3 storage settings: {detail}") from exc
        return ObjectStorage(store)
    raise ValueError(f"unsupported storage URL scheme {parts.scheme!r} in {url!r}")


def _copy_beside(source: Path, parts: Path) -> Path:
    """A copy of ``source`` in a new part file in ``parts`` (mode 0o600, as written part files
    have); returns its path. Raises ``OSError``; no part file is left then."""
    parts.mkdir(parents=True, exist_ok=True)
    part = parts / f"copy-{secrets.token_hex(8)}"
    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        shutil.copyfile(source, part)  # sendfile(2) on Linux: not through Python's memory
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
