"""Origin fetcher: a streamed, size-limited, retried download to local disk.

``OriginFetcher.fetch(url, max_bytes=...)`` GETs an http(s) URL through the
address guard, follows redirects itself (each hop checked again), streams the
body to a spool file while computing its SHA-256, and retries transient
failures with exponential backoff and full jitter. Every failure is a
``FetchError`` whose ``code`` is a stable word for the import status and whose
``reason`` is a sentence for a person.

Rules and their sources:

- Redirects (RFC 9110 §15.4): 301, 302, 303, 307 and 308 with a ``Location``
  (a URI reference, resolved against the request URL, RFC 3986 §5); at most
  ``fetch_max_redirects`` hops; http and https only; credentials from the URL
  are sent to the first origin only; no cookies are stored or sent.
- Conditional requests (RFC 9110 §13): ``If-None-Match`` / ``If-Modified-Since``
  when an ETag / Last-Modified is given; 304 answers ``NotModified``.
- ``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, honoured
  on retryable answers, capped at ``fetch_backoff_max``.
- Content codings (RFC 9110 §8.4): ``Accept-Encoding: gzip, deflate`` is
  sent and the body is decoded here, in steps of at most 1 MiB, so that the
  size limit counts decoded bytes and a compressed bomb is cut off early.
- Transient, retried: connection errors, timeouts, truncated bodies, 408, 429
  and 5xx. Final: other 4xx, blocked addresses, unknown hosts, size and
  redirect limits, invalid URLs, failed TLS handshakes (a certificate that
  does not verify, an origin that does not speak TLS) and responses that are
  not well-formed HTTP/1.1 (both would fail the same way again).

HTTP is aiohttp's, through ``create_guarded_session`` (every connection goes
to an address the guard checked); redirects, decoding and retries are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import hashlib
import math
import os
import random
import re
import socket
import ssl
import tempfile
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import aiohttp
import anyio
import structlog
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, InvalidHeader, LineTooLong
from yarl import URL

from fileimport.core.address_guard import (
    AddressGuard,
    BlockedAddressError,
    HostNotFoundError,
    create_guarded_session,
    guard_from_settings,
)
from fileimport.core.settings import Settings
from fileimport.core.urls import check_http_url, host_problem

log = structlog.get_logger(__name__)

HEAD_BYTES = 64 * 1024
"""Bytes kept in ``FetchedFile.head`` for MIME sniffing."""

HeadLimit = Callable[[bytes], "tuple[int, str] | None"]
"""Given the first `HEAD_BYTES` of a larger body: a tighter size limit in bytes and what sets it
(``"media type 'image' (image/png)"``), or None. Lets a file whose type is known only from its
content stop at that type's limit instead of downloading up to the largest."""

WRITEBACK_BYTES = 32 * 1024 * 1024
"""Spool bytes after which write-back to disk is started (see `_Spool`)."""


def _start_writeback(fd: int, offset: int, length: int) -> None:
    # Advice only: a file system that ignores it loses nothing but speed.
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


_START_WRITEBACK = _start_writeback if hasattr(os, "posix_fadvise") else None

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 429})
ACCEPTED_CONTENT_CODINGS = frozenset({"identity", "gzip", "deflate"})
DECODE_STEP_BYTES = 1024 * 1024
"""Most decoded bytes one decompression step may produce."""

# RFC 9110 §15 renamed a few reason phrases that http.HTTPStatus still has in
# their RFC 7231 form; 418 is RFC 2324's.
_REASON_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    418: "I'm a teapot",
    422: "Unprocessable Content",
}


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded body, spooled to local disk unless it is small.

    ``path`` is the spool file, which belongs to the caller, who deletes it;
    None for a body of at most `HEAD_BYTES` (64 KiB), which is all in
    ``head`` and never touched the disk (a spool file and its thread hops
    cost more than such a body, bench case (a)). ``size`` is in bytes
    after content decoding (gzip/deflate), ``sha256`` the hex digest of those
    bytes, ``head`` their first 64 KiB. ``content_type``, ``etag`` and
    ``last_modified`` are the final response's headers as sent; ``final_url``
    is the URL after redirects; ``attempts`` counts tries, 1 when the first
    one succeeded.
    """

    path: Path | None
    size: int
    sha256: str
    head: bytes
    content_type: str | None
    etag: str | None
    last_modified: str | None
    final_url: str
    attempts: int


@dataclass(frozen=True)
class NotModified:
    """The origin answered 304 Not Modified to a conditional request (RFC 9110 §15.4.5)."""

    etag: str | None
    last_modified: str | None
    attempts: int


class FetchError(Exception):
    """A fetch that failed; ``str(error)`` is ``reason``.

    ``code`` is one of ``invalid_url``, ``unsupported_scheme``,
    ``blocked_address``, ``host_not_found``, ``connection_error``,
    ``timeout``, ``tls_error``, ``invalid_response``, ``http_<status>``
    (``http_404``), ``too_large``, ``truncated``, ``too_many_redirects`` or
    ``decoding_error``.
    ``retryable`` says whether the failure is transient (it stays True on
    the last attempt, so a caller may try again much later);
    ``retry_after`` is the origin's ``Retry-After`` in seconds, if any;
    ``attempts`` is how many tries were made.
    """

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = attempts

    def __repr__(self) -> str:
        return f"FetchError(code={self.code!r}, reason={self.reason!r}, attempts={self.attempts})"


@dataclass
class _OriginSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class OriginFetcher:
    """Downloads files from origins; one instance per process, shared by tasks.

    ``settings`` supplies the ``fetch_*`` limits, ``guard`` the address guard
    (default: ``guard_from_settings(settings)``), ``spool_dir`` the folder for
    downloads (created when missing). Use as an async context manager or call
    ``aclose()``. The aiohttp session (``create_guarded_session``) is made by
    the first fetch, in the running event loop.
    """

    def __init__(self, settings: Settings, *, guard: AddressGuard | None = None, spool_dir: Path) -> None:
        self._settings = settings
        self._guard = guard or guard_from_settings(settings)
        self._spool_dir = spool_dir
        self._origins: dict[tuple[str, str, int], _OriginSlot] = {}
        # Downloads in flight in this process, taken after an origin's slot
        # (`_slots`): files queueing for a busy origin hold none, so they
        # cannot keep the files of other origins waiting.
        self._download_slots = asyncio.Semaphore(settings.worker_concurrency)
        # Made on first use: aiohttp needs the running event loop.
        self._session: aiohttp.ClientSession | None = None
        # Threads hashing streamed bodies (`_Spool.write_async`), apart from
        # anyio's default pool of 40, which database transactions share: with
        # 16 large downloads, their writes and hashes would take 32 of those.
        self._hash_threads: anyio.CapacityLimiter | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            settings = self._settings
            # An unlimited pool: concurrency is bounded by the worker and, per
            # origin, by the slots below; a pool limit would only add waits.
            self._session = create_guarded_session(
                self._guard,
                connect_timeout=settings.fetch_connect_timeout,
                read_timeout=settings.fetch_read_timeout,
                headers={"Accept-Encoding": "gzip, deflate"},
                # Decoded here, where the size limit can see every step.
                auto_decompress=False,
                read_bufsize=settings.fetch_chunk_bytes,
            )
        return self._session

    async def __aenter__(self) -> Self:
        await anyio.Path(self._spool_dir).mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            await self._session.close()

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        etag: str | None = None,
        last_modified: str | None = None,
        limit_for_head: HeadLimit | None = None,
    ) -> FetchedFile | NotModified:
        """Download ``url`` to a new file in the spool folder.

        ``max_bytes`` limits both ``Content-Length`` and the bytes received
        after decoding; ``limit_for_head`` may lower it once the first
        `HEAD_BYTES` have arrived. ``etag`` / ``last_modified`` (header values from an
        earlier download) make the request conditional; a 304 then returns
        ``NotModified``. Retries transient failures up to
        ``fetch_max_attempts`` tries in all. Raises ``FetchError``; no spool
        file is left behind on failure or cancellation.
        """
        target = parse_http_url(url)
        conditional: dict[str, str] = {}
        if etag:
            conditional["If-None-Match"] = etag
        if last_modified:
            conditional["If-Modified-Since"] = last_modified

        max_attempts = self._settings.fetch_max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._attempt(
                    target, max_bytes=max_bytes, conditional=conditional, limit_for_head=limit_for_head
                )
            except FetchError as exc:
                exc.attempts = attempt
                if not exc.retryable or attempt >= max_attempts:
                    log.info("fetch.failed", url=url, code=exc.code, attempts=attempt, reason=exc.reason)
                    raise
                delay = self._retry_delay(attempt, exc.retry_after)
                log.info(
                    "fetch.retry",
                    url=url,
                    code=exc.code,
                    attempt=attempt,
                    delay=round(delay, 3),
                    reason=exc.reason,
                )
                await anyio.sleep(delay)
                continue
            return dataclasses.replace(result, attempts=attempt)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1``: full jitter, or ``Retry-After``."""
        cap = self._settings.fetch_backoff_max
        if retry_after is not None:
            return min(retry_after, cap)
        ceiling = min(cap, self._settings.fetch_backoff_base * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret

    async def _attempt(
        self, url: URL, *, max_bytes: int, conditional: dict[str, str], limit_for_head: HeadLimit | None
    ) -> FetchedFile | NotModified:
        """One try: the redirect chain and the body, under the overall deadline."""
        # asyncio's own timeout and semaphores on the per-file path: anyio's
        # cost ~10 us per acquire (a checkpoint is a trip round the event
        # loop) and were 9 % of the service's Python time in bench case (a).
        started = asyncio.get_running_loop().time()
        deadline = asyncio.timeout_at(started + self._deadline_seconds(max_bytes))
        try:
            async with deadline:
                return await self._follow(
                    url,
                    max_bytes=max_bytes,
                    conditional=conditional,
                    deadline=deadline,
                    limit_for_head=limit_for_head,
                )
        except TimeoutError:
            if not deadline.expired():
                raise
        seconds = (deadline.when() or started) - started
        raise FetchError(
            "timeout",
            f"The download of {_display(url)} did not finish within its deadline of {seconds:.1f} "
            f"seconds ({self._settings.fetch_deadline_base:g} s plus 1 s per "
            f"{int(self._settings.fetch_deadline_min_rate)} bytes expected).",
            retryable=True,
        )

    def _deadline_seconds(self, expected_bytes: int) -> float:
        rate = max(int(self._settings.fetch_deadline_min_rate), 1)
        return self._settings.fetch_deadline_base + expected_bytes / rate

    async def _follow(
        self,
        url: URL,
        *,
        max_bytes: int,
        conditional: dict[str, str],
        deadline: asyncio.Timeout,
        limit_for_head: HeadLimit | None,
    ) -> FetchedFile | NotModified:
        first_origin = _origin_key(url)
        authorization = (
            aiohttp.encode_basic_auth(url.user or "", url.password or "")
            if url.raw_user is not None or url.raw_password is not None
            else None
        )
        url = first_url = url.with_user(None)
        visited = {str(url)}
        redirects = 0
        while True:
            headers = conditional
            if authorization and _origin_key(url) == first_origin:
                headers = {**conditional, "Authorization": authorization}
            async with self._slots(_origin_key(url), deadline):
                started = asyncio.get_running_loop().time()
                response = await self._send(url, headers)
                try:
                    if response.status not in REDIRECT_STATUSES:
                        return await self._receive(
                            response,
                            url,
                            max_bytes=max_bytes,
                            conditional=conditional,
                            deadline=deadline,
                            started=started,
                            limit_for_head=limit_for_head,
                        )
                    next_url = _redirect_target(response, url)
                finally:
                    # Back to the pool when the body was read to its end,
                    # otherwise the connection is closed.
                    response.release()
            redirects += 1
            if str(next_url) in visited:
                raise FetchError(
                    "too_many_redirects",
                    f"{first_url} redirects in a loop (back to {_display(next_url)}).",
                )
            if redirects > self._settings.fetch_max_redirects:
                raise FetchError(
                    "too_many_redirects",
                    f"{first_url} redirected more than "
                    f"{self._settings.fetch_max_redirects} times; "
                    f"the last hop was to {_display(next_url)}.",
                )
            log.debug("fetch.redirect", status=response.status, url=str(url), location=str(next_url))
            visited.add(str(next_url))
            url = next_url

    @contextlib.asynccontextmanager
    async def _slots(self, key: tuple[str, str, int], deadline: asyncio.Timeout) -> AsyncIterator[None]:
        """Hold one of ``fetch_per_origin_concurrency`` slots for ``key``, then one of the
        ``worker_concurrency`` download slots of this process, for one request and its body.

        In this order, a file waiting for a busy origin (a slow one, at its
        limit) holds no download slot, which a file of another origin can use;
        nor does a download waiting out a retry's backoff. Queueing for either
        is not the origin's slowness: ``deadline``'s clock stops meanwhile.
        """
        slot = self._origins.get(key)
        if slot is None:
            slot = self._origins[key] = _OriginSlot(
                asyncio.Semaphore(self._settings.fetch_per_origin_concurrency)
            )
        slot.users += 1
        try:
            await _acquire_off_the_clock(slot.semaphore, deadline)
            try:
                await _acquire_off_the_clock(self._download_slots, deadline)
                try:
                    yield
                finally:
                    self._download_slots.release()
            finally:
                slot.semaphore.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._origins[key]

    async def _send(self, url: URL, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """Send one GET and return the response with its headers read and its body not yet."""
        origin = _display_origin(url)
        try:
            return await self._client().get(url, headers=headers, allow_redirects=False)
        except BlockedAddressError as exc:
            raise FetchError("blocked_address", f"{_display(url)} was not fetched: {exc}.") from exc
        except HostNotFoundError as exc:
            raise FetchError(
                "host_not_found",
                f"The host {exc.host} in {_display(url)} does not resolve to any address; check the URL.",
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise FetchError(
                "timeout",
                f"Connecting to {origin} timed out after {self._settings.fetch_connect_timeout:g} seconds.",
                retryable=True,
            ) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise FetchError(
                "timeout",
                f"{origin} did not answer the request for {_display(url)} within "
                f"{self._settings.fetch_read_timeout:g} seconds.",
                retryable=True,
            ) from exc
        except aiohttp.NonHttpUrlClientError as exc:
            raise FetchError("unsupported_scheme", f"{_display(url)} is not an http or https URL.") from exc
        except aiohttp.InvalidURL as exc:
            # aiohttp refuses legacy numeric IPv4 hosts ("127.1") itself.
            raise FetchError("invalid_url", f"{_display(url)} is not a valid URL: {_describe(exc)}.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            tls = _ssl_error(exc)
            if tls is not None:
                # A refused certificate or a peer that does not speak TLS
                # fails the same way every time; only a connection lost in
                # the middle of the handshake is worth another try.
                raise FetchError(
                    "tls_error",
                    f"The TLS handshake with {origin} failed: {_describe_ssl_error(tls)}.",
                    retryable=isinstance(tls, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError),
                ) from exc
            malformed = _http_parse_error(exc)
            if malformed is not None:
                # aiohttp's parser refused the status line or headers; it
                # reports that as ClientResponseError(status=400), which is
                # not an answer from the origin.
                raise FetchError(
                    "invalid_response",
                    f"The origin at {origin} sent a malformed HTTP response "
                    f"({_describe_http_parse_error(malformed)}).",
                ) from exc
            raise FetchError(
                "connection_error",
                f"The connection to {origin} failed before it answered: {describe_network_error(exc)}.",
                retryable=True,
            ) from exc

    async def _receive(
        self,
        response: aiohttp.ClientResponse,
        url: URL,
        *,
        max_bytes: int,
        conditional: dict[str, str],
        deadline: asyncio.Timeout,
        started: float,
        limit_for_head: HeadLimit | None = None,
    ) -> FetchedFile | NotModified:
        """Turn a non-redirect answer into a result, streaming a 2xx body to disk."""
        status = response.status
        if status == 304 and conditional:
            # A 304 should repeat the validators (RFC 9110 §15.4.5); when it
            # does not, the ones we sent are still current.
            return NotModified(
                etag=response.headers.get("ETag") or conditional.get("If-None-Match"),
                last_modified=response.headers.get("Last-Modified") or conditional.get("If-Modified-Since"),
                attempts=0,
            )
        if not 200 <= status < 300 or status == 206:  # 206: no Range was asked for
            transient = status in RETRYABLE_STATUSES or status >= 500
            raise FetchError(
                f"http_{status}",
                f"The origin answered {_status_text(status)} for {_display(url)}.",
                retryable=transient,
                retry_after=_parse_retry_after(response.headers.get("Retry-After")) if transient else None,
            )

        codings = _content_codings(response)
        unknown = [c for c in codings if c not in ACCEPTED_CONTENT_CODINGS]
        if unknown:
            raise FetchError(
                "decoding_error",
                f"The origin sent {_display(url)} with Content-Encoding {', '.join(unknown)}, "
                "which was not asked for and cannot be decoded.",
            )
        content_length = _content_length(response)
        if content_length is not None and content_length > max_bytes:
            raise FetchError(
                "too_large",
                f"The file at {_display(url)} is {content_length} bytes (Content-Length), "
                f"over the limit of {max_bytes} bytes.",
            )
        expected = content_length if content_length is not None else max_bytes
        by_size = started + self._deadline_seconds(expected)
        if by_size < (deadline.when() or math.inf):
            deadline.reschedule(by_size)

        decoder = _ContentDecoder(codings) if any(c != "identity" for c in codings) else None
        if self._hash_threads is None:
            self._hash_threads = anyio.CapacityLimiter(self._settings.worker_concurrency)
        spool = _Spool(self._spool_dir, self._hash_threads)
        done = False
        unwatch = _fail_body_when_connection_drops(response)
        try:
            size = 0
            received = 0
            head = bytearray()
            # Pieces are handed to the writer thread as they came: no copies.
            pending: list[bytes] = []
            pending_bytes = 0
            chunk_bytes = self._settings.fetch_chunk_bytes

            limited_by = ""  # what set max_bytes, once limit_for_head lowered it

            def over(limit: int, measure: str) -> FetchError:
                return FetchError(
                    "too_large",
                    f"The file at {_display(url)} is over the limit of {limit} bytes{limited_by} ({measure}).",
                )

            async def take(pieces: Iterable[bytes]) -> None:
                """Count, keep the head of, and queue ``pieces``, writing the queue out
                whenever it reaches ``chunk_bytes``: also between the pieces that one
                compressed chunk inflates to, which can be a thousand times its size."""
                nonlocal size, head, pending, pending_bytes, max_bytes, limited_by
                for piece in pieces:
                    size += len(piece)
                    if size > max_bytes:
                        after = " after decoding" if decoder else ""
                        raise over(max_bytes, f"more than {max_bytes} bytes received{after}")
                    if len(head) < HEAD_BYTES:
                        head += piece[: HEAD_BYTES - len(head)]
                        if len(head) == HEAD_BYTES and limit_for_head is not None:
                            tighter = limit_for_head(bytes(head))
                            if tighter is not None and tighter[0] < max_bytes:
                                max_bytes, limited_by = tighter[0], f" of {tighter[1]}"
                                if (
                                    content_length is not None
                                    and decoder is None
                                    and content_length > max_bytes
                                ):
                                    raise over(max_bytes, f"{content_length} bytes by its Content-Length")
                                if size > max_bytes:
                                    raise over(max_bytes, f"more than {max_bytes} bytes received")
                    pending.append(piece)
                    pending_bytes += len(piece)
                    if pending_bytes >= chunk_bytes and size > HEAD_BYTES:
                        await spool.write_async(pending)
                        pending, pending_bytes = [], 0

            try:
                # The pieces aiohttp buffered as they came off the socket (up
                # to fetch_chunk_bytes before it pauses reading), not joined.
                async for raw, _ in response.content.iter_chunks():
                    if not raw:
                        continue
                    received += len(raw)
                    await take((raw,) if decoder is None else decoder.decode(raw))
                if decoder is not None:
                    await take(decoder.flush())
                if size > HEAD_BYTES:  # (the spool is opened only past HEAD_BYTES)
                    path: Path | None = await anyio.to_thread.run_sync(spool.finish, pending)
                    sha256 = spool.sha256()
                else:
                    # Small: the head is the whole body; no spool file, no hop.
                    path, sha256 = None, hashlib.sha256(head).hexdigest()
            except aiohttp.ServerTimeoutError as exc:
                raise FetchError(
                    "timeout",
                    f"The origin sent nothing for {self._settings.fetch_read_timeout:g} seconds "
                    f"while sending {_display(url)} ({_bytes(size)} received).",
                    retryable=True,
                ) from exc
            except _BodyFramingError as exc:
                problem = (
                    _describe_http_parse_error(exc.parse_error)
                    if exc.parse_error is not None
                    else "its body could not be parsed"
                )
                raise FetchError(
                    "invalid_response",
                    f"The origin at {_display_origin(url)} sent a malformed HTTP response ({problem}, "
                    f"after {_bytes(received)} of body).",
                ) from exc
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise FetchError(
                    "truncated",
                    f"The connection closed before the whole body of {_display(url)} arrived "
                    f"({_bytes(size)} received{_of_length(content_length)}): "
                    f"{_describe_lost_connection(response, exc)}.",
                    retryable=True,
                ) from exc
            except _CompressedStreamCut as exc:
                raise FetchError(
                    "truncated",
                    f"The {', '.join(codings)} body of {_display(url)} ended before its compressed "
                    f"stream did ({_bytes(received)} received, {_bytes(size)} decoded): the file is "
                    "incomplete.",
                    retryable=True,
                ) from exc
            except zlib.error as exc:
                raise FetchError(
                    "decoding_error",
                    f"The {', '.join(codings)} body of {_display(url)} could not be decoded: "
                    f"{_describe(exc)}.",
                ) from exc
            if content_length is not None and decoder is None and received < content_length:
                raise FetchError(
                    "truncated",
                    f"The body of {_display(url)} ended after {received} of {content_length} bytes.",
                    retryable=True,
                )
            done = True
        finally:
            unwatch()
            if not done:
                # Synchronous on purpose: it must also run when cancelled.
                spool.discard()
        log.debug("fetch.received", url=str(url), size=size, spooled_to=str(path) if path else None)
        return FetchedFile(
            path=path,
            size=size,
            sha256=sha256,
            head=bytes(head),
            content_type=response.headers.get("Content-Type"),
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            final_url=str(url),
            attempts=0,
        )


class _Spool:
    """A spool file created on first write (in a worker thread), so a small body costs one hop.

    Neither hashing nor writing runs on the event loop: a streamed body's
    pieces are hashed in one worker thread while another writes them
    (`write_async`; hashlib and file writes release the GIL, so the two use
    two cores), the last pieces in one thread (`finish`). The download
    waits for each write before it reads on (at most ``fetch_chunk_bytes``
    are in memory).

    Every `WRITEBACK_BYTES` written, the kernel is asked to start writing the
    finished stretch to disk (``posix_fadvise(POSIX_FADV_DONTNEED)``, which on
    Linux starts write-back of dirty pages without waiting and drops clean
    ones). Otherwise a large body sits dirty in the page cache (Linux starts
    write-back by itself only past ``dirty_background_ratio`` of memory) and
    the ``fsync`` that stores it pays for all of it at the end: 1 GiB took
    1.0-1.3 s to ``fsync`` here, 0.01 s with write-back started on the way
    (``bench/README.md``, case (c)).
    """

    def __init__(self, folder: Path, hash_threads: anyio.CapacityLimiter | None = None) -> None:
        self._folder = folder
        self._hash_threads = hash_threads
        self._opened: tuple[IO[bytes], Path] | None = None
        self._digest = hashlib.sha256()
        self._written = 0
        self._written_back = 0

    def sha256(self) -> str:
        """Hex SHA-256 of every byte written."""
        return self._digest.hexdigest()

    def _open(self) -> tuple[IO[bytes], Path]:
        if self._opened is None:
            try:
                fd, name = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=self._folder)
            except FileNotFoundError:  # the folder was removed (by hand?) since the fetcher started
                self._folder.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=self._folder)
            self._opened = (os.fdopen(fd, "wb"), Path(name))
        return self._opened

    async def write_async(self, pieces: list[bytes]) -> None:
        """`write`, with the SHA-256 computed in a second thread while the first one writes
        (both release the GIL): a large body's hash no longer adds to its writing time."""
        hashing = asyncio.ensure_future(
            anyio.to_thread.run_sync(self._hash, pieces, limiter=self._hash_threads)
        )
        try:
            await anyio.to_thread.run_sync(self._write_file, pieces)
        finally:
            # Not a task group: a failed write (a full disk) stays an OSError, not a group.
            await hashing

    def _hash(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._digest.update(piece)

    def write(self, pieces: list[bytes]) -> None:
        self._hash(pieces)
        self._write_file(pieces)

    def _write_file(self, pieces: list[bytes]) -> None:
        file = self._open()[0]
        for piece in pieces:
            file.write(piece)
            self._written += len(piece)
        if self._written - self._written_back >= WRITEBACK_BYTES and _START_WRITEBACK is not None:
            file.flush()
            _START_WRITEBACK(file.fileno(), self._written_back, self._written - self._written_back)
            self._written_back = self._written

    def finish(self, pieces: list[bytes]) -> Path:
        """Write the last pieces and close; returns the file's path."""
        self.write(pieces)
        file, path = self._open()
        file.close()
        return path

    def discard(self) -> None:
        if self._opened is not None:
            file, path = self._opened
            file.close()
            path.unlink(missing_ok=True)


class _CompressedStreamCut(Exception):
    """The body ended before its compressed stream did."""


_GZIP_MAGIC = b"\x1f\x8b"


class _Inflater:
    """One gzip or deflate layer (RFC 9110 §8.4.1.2-3), inflated in bounded steps.

    A gzip body may hold several members, one after the other (RFC 1952
    §2.2), decoded in turn; bytes after the end of the stream that start no
    member, or a stream that the body cuts short, are errors, never a file
    quietly cut to what was decoded.
    """

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._started = False
        self._inflater = self._new()

    def _new(self) -> zlib._Decompress:
        return zlib.decompressobj(zlib.MAX_WBITS | 16 if self._coding == "gzip" else zlib.MAX_WBITS)

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces of at most ``DECODE_STEP_BYTES`` for ``data``; raises ``zlib.error``."""
        first = not self._started
        self._started = True
        try:
            out = self._inflater.decompress(data, DECODE_STEP_BYTES)
        except zlib.error:
            if self._coding != "deflate" or not first:
                raise
            # Servers often send a bare RFC 1951 stream for "deflate",
            # without the zlib wrapper (RFC 1950) that the coding names.
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._inflater.decompress(data, DECODE_STEP_BYTES)
        while True:
            while out:
                yield out
                out = self._inflater.decompress(self._inflater.unconsumed_tail, DECODE_STEP_BYTES)
            rest = self._next_member()
            if rest is None:
                return
            self._inflater = self._new()
            out = self._inflater.decompress(rest, DECODE_STEP_BYTES)

    def _next_member(self) -> bytes | None:
        """The bytes of the gzip member that follows an ended stream, once its magic arrived, else None.

        Raises ``zlib.error`` when what follows the end of the stream is no
        gzip member (zlib keeps every byte fed after the end in ``unused_data``).
        """
        rest = self._inflater.unused_data if self._inflater.eof else b""
        if not rest:
            return None
        if self._coding != "gzip" or (len(rest) >= len(_GZIP_MAGIC) and not rest.startswith(_GZIP_MAGIC)):
            raise self._trailing_data(rest)
        if len(rest) < len(_GZIP_MAGIC):
            return None  # the next member's header is still arriving
        return rest

    def flush(self) -> bytes:
        """What is left once the body has ended; raises `_CompressedStreamCut` or ``zlib.error``."""
        out = self._inflater.flush()
        if self._started and not self._inflater.eof:
            raise _CompressedStreamCut(f"the {self._coding} stream ended before its end")
        if self._inflater.unused_data:
            raise self._trailing_data(self._inflater.unused_data)
        return out

    def _trailing_data(self, rest: bytes) -> zlib.error:
        return zlib.error(f"{len(rest)} bytes of data after the end of the {self._coding} stream")


class _ContentDecoder:
    """Undoes the content codings of a body, listed in the order they were applied.

    ``codings`` are lower-case Content-Encoding tokens, each ``gzip``,
    ``deflate`` or ``identity``; they are undone last first (RFC 9110
    §8.4). Every piece yielded is at most ``DECODE_STEP_BYTES``, so a few
    compressed bytes cannot inflate to a large buffer before the caller
    counts them. Raises ``zlib.error`` on data that is not what its coding
    says.
    """

    def __init__(self, codings: list[str]) -> None:
        self._layers = [_Inflater(c) for c in reversed(codings) if c != "identity"]

    def decode(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def flush(self) -> Iterator[bytes]:
        """What the layers still hold once the body has ended."""
        for level, layer in enumerate(self._layers):
            yield from self._through(level + 1, layer.flush())

    def _through(self, level: int, data: bytes) -> Iterator[bytes]:
        if level == len(self._layers):
            if data:
                yield data
            return
        if not data:
            return
        for piece in self._layers[level].inflate(data):
            yield from self._through(level + 1, piece)


def parse_http_url(value: str) -> URL:
    """``value`` as an absolute http(s) URL that a connection can be made to.

    The host must be a valid name or IP address and the port within 1-65535;
    nothing is resolved. Spaces and non-ASCII characters in the path and
    query are percent-encoded (RFC 3986 §2.1; a space as ``%20``, also in the
    query), the host is IDNA-encoded. Raises ``FetchError`` with code
    ``invalid_url`` or ``unsupported_scheme``.
    """
    try:
        url = _parse_url(value)
    except (ValueError, TypeError) as exc:
        problem = check_http_url(value) if isinstance(value, str) else None
        detail = _host_phrase(problem) if problem and ("host" in problem or "port" in problem) else None
        raise FetchError("invalid_url", f"{value!r} is not a valid URL: {detail or _describe(exc)}.") from exc
    if url.scheme and url.scheme not in ("http", "https"):
        raise FetchError("unsupported_scheme", f"{value!r} is not an http or https URL.")
    problem = _url_problem(url)
    if problem:
        raise FetchError("invalid_url", f"{value!r} is not a valid URL: {problem}.")
    return url


def _parse_url(value: str) -> URL:
    # yarl would send a space in the query as "+", a space to form decoders
    # only; "%20" means a space everywhere (RFC 3986 §2.1).
    return URL(value.replace(" ", "%20"))


def _url_problem(url: URL) -> str | None:
    if not url.scheme:
        return "it is not an absolute http or https URL"
    # The same host and port rules as the API's check of posted URLs.
    problem = host_problem(url.host_port_subcomponent or "")
    return None if problem is None else _host_phrase(problem)


def _host_phrase(problem: str) -> str:
    """``core.urls``' phrase for a host or port problem, worded for a fetch error."""
    if "port" in problem:
        return "its port is out of range"
    return "it names no host" if problem == "must name a host" else "its host is not a valid name or address"


class _BodyFramingError(Exception):
    """The connection closed while a body was neither complete nor failed (see below).

    ``parse_error`` is the parser's complaint, when aiohttp kept one.
    """

    def __init__(self, parse_error: HttpProcessingError | None) -> None:
        super().__init__("the connection closed in the middle of the body")
        self.parse_error = parse_error


def _fail_body_when_connection_drops(response: aiohttp.ClientResponse) -> Callable[[], None]:
    """Make the body's reader fail if the connection closes under it; returns the undo.

    aiohttp (3.14) closes the connection when its parser refuses bytes in the
    middle of a body (a chunk size line that is not hex, say) but never tells
    the body's reader, which would then wait for the download's deadline
    (60 s and more) and be retried as a timeout. A body that ends or breaks
    in any other way is complete or failed before the connection's close
    callback runs, so this changes nothing for them.
    """
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is None:
        return _nothing
    content = response.content

    def on_closed(_: object = None) -> None:
        if not content.is_eof() and content.exception() is None:
            error = protocol.exception()
            content.set_exception(
                _BodyFramingError(error if isinstance(error, HttpProcessingError) else None)
            )

    closed = protocol.closed
    if closed is None:  # the connection is gone already
        on_closed()
        return _nothing
    if closed not in _CLOSE_FUTURES:
        # Asking for ``closed`` created the future, which lives as long as the
        # connection (pooled, over many responses); aiohttp sets an error on
        # it when the connection breaks, which nobody would ever retrieve.
        _CLOSE_FUTURES.add(closed)
        closed.add_done_callback(_retrieve_exception)
    closed.add_done_callback(on_closed)

    def unwatch() -> None:
        closed.remove_done_callback(on_closed)

    return unwatch


async def _acquire_off_the_clock(semaphore: asyncio.Semaphore, deadline: asyncio.Timeout) -> None:
    """Acquire ``semaphore``, with ``deadline`` moved on by the time spent waiting for it."""
    when = deadline.when()
    if not semaphore.locked() or when is None:  # free: taken without waiting (the deadline stays)
        await semaphore.acquire()
        return
    loop = asyncio.get_running_loop()
    remaining = when - loop.time()
    deadline.reschedule(None)
    try:
        await semaphore.acquire()
    finally:
        deadline.reschedule(loop.time() + remaining)


def _nothing() -> None:
    return None


_CLOSE_FUTURES: weakref.WeakSet[asyncio.Future[None]] = weakref.WeakSet()


def _retrieve_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _redirect_target(response: aiohttp.ClientResponse, url: URL) -> URL:
    """The next hop of a redirect (RFC 9110 §10.2.2), validated."""
    status = response.status
    raw = next((value for key, value in response.raw_headers if key.lower() == b"location"), None)
    if not raw or not raw.strip():
        raise FetchError(
            f"http_{status}",
            f"The origin answered {_status_text(status)} for {_display(url)} without a Location header.",
        )
    try:
        location = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        location = raw.decode("latin-1").strip()
    try:
        target = url.join(_parse_url(location))
    except (ValueError, TypeError) as exc:
        raise FetchError(
            "invalid_url", f"{_display(url)} redirects to {location!r}, which is not a valid URL."
        ) from exc
    if target.scheme not in ("http", "https"):
        raise FetchError(
            "unsupported_scheme",
            f"{_display(url)} redirects to {location!r}, which is not an http or https URL.",
        )
    problem = _url_problem(target)
    if problem:
        raise FetchError(
            "invalid_url",
            f"{_display(url)} redirects to {location!r}, which is not a valid URL: {problem}.",
        )
    # Credentials in a Location would be the origin's own choice, but they
    # are never ours to send; the fragment is not sent either.
    return target.with_user(None).with_fragment(None)


def _content_codings(response: aiohttp.ClientResponse) -> list[str]:
    """The Content-Encoding tokens, lower case, in the order applied (RFC 9110 §8.4)."""
    return [
        coding.strip().lower()
        for value in response.headers.getall("Content-Encoding", ())
        for coding in value.split(",")
        if coding.strip()
    ]


def _content_length(response: aiohttp.ClientResponse) -> int | None:
    """``Content-Length`` as bytes, or None when absent or not a single number (RFC 9110 §8.6)."""
    values = {v.strip() for value in response.headers.getall("Content-Length", ()) for v in value.split(",")}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isdigit() else None


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _origin_key(url: URL) -> tuple[str, str, int]:
    """(scheme, host, port): the origin of RFC 6454 §4, the unit of the per-origin limit."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.scheme, (url.raw_host or "").lower(), port)


def _display(url: URL) -> str:
    """The URL without credentials, for messages."""
    return str(url.with_user(None)) if url.raw_user is not None or url.raw_password is not None else str(url)


def _display_origin(url: URL) -> str:
    scheme, host, port = _origin_key(url)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _status_text(status: int) -> str:
    """``404 Not Found``: the status code and its reason phrase from RFC 9110 §15, when it has one."""
    phrase = _REASON_PHRASES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
    return f"{status} {phrase}" if phrase else str(status)


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _of_length(content_length: int | None) -> str:
    return f" of {content_length}" if content_length is not None else ""


def _describe_lost_connection(response: aiohttp.ClientResponse, exc: BaseException) -> str:
    """Why a body stopped: the connection's own error ("Connection reset by peer") when known.

    aiohttp reports a cut body as a payload error that names only the
    missing bytes; what happened to the connection is kept on its protocol.
    """
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    lost = protocol.exception() if protocol is not None else None
    return describe_network_error(lost if lost is not None else exc)


# getaddrinfo's error codes (they are not errno values: os.strerror(-3) is
# "Unknown error -3"), in the words of glibc's gai_strerror.
_RESOLVER_ERRORS = {
    code: text
    for name, text in (
        ("EAI_AGAIN", "Temporary failure in name resolution"),
        ("EAI_NONAME", "Name or service not known"),
        ("EAI_FAIL", "Non-recoverable failure in name resolution"),
        ("EAI_NODATA", "No address associated with hostname"),
        ("EAI_ADDRFAMILY", "Address family for hostname not supported"),
        ("EAI_FAMILY", "ai_family not supported"),
        ("EAI_SERVICE", "Servname not supported for ai_socktype"),
        ("EAI_MEMORY", "Memory allocation failure"),
    )
    if (code := getattr(socket, name, None)) is not None
}


def describe_network_error(exc: BaseException) -> str:
    """A short description of a failed connection or transfer, for a person.

    aiohttp wraps the operating system's error in errors whose own text is
    long and technical ("Cannot connect to host ... ssl:default [Connect
    call failed ...]"); the OS's words ("Connection refused", "Connection
    reset by peer") say more, so the first error along the chain of causes
    that carries an errno wins (for a DNS failure, the resolver's words).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror) and (current.strerror or current.errno in _RESOLVER_ERRORS):
            return current.strerror or _RESOLVER_ERRORS[current.errno]
        if isinstance(current, ssl.SSLError) and not isinstance(current, aiohttp.ClientError):
            # Its errno is OpenSSL's error kind, not an OS error number.
            return f"TLS error: {_describe_ssl_error(current)}"
        if isinstance(current, aiohttp.ServerDisconnectedError) and not isinstance(current.message, str):
            # aiohttp passes the partly parsed response as the "message".
            return "the origin closed the connection before its response headers ended"
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno)
        current = current.__cause__ or current.__context__
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text or type(exc).__name__


def _along_causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its chain of causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl`` module's own error behind an aiohttp error, if any.

    aiohttp's ``ClientConnectorSSLError`` is an ``ssl.SSLError`` subclass
    too, but without OpenSSL's ``reason``; the one it wraps has it.
    """
    for current in _along_causes(exc):
        if isinstance(current, ssl.SSLError) and not isinstance(current, aiohttp.ClientError):
            return current
    return None


def _describe_ssl_error(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words: ``wrong version number (is it plain HTTP?)``.

    For a certificate, OpenSSL's verify message: ``certificate verify failed:
    self-signed certificate``.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or (exc.reason or "").lower().replace("_", " ")
        return f"certificate verify failed: {detail}" if detail else "certificate verify failed"
    if exc.reason:
        text = exc.reason.lower().replace("_", " ")
        if exc.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST"):
            text += " (is it plain HTTP?)"
        return text
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "the connection was closed during the handshake"
    return _describe(exc)


def _http_parse_error(exc: BaseException) -> HttpProcessingError | None:
    """The parser's error when aiohttp could not parse the response, else None.

    aiohttp raises ``ClientResponseError`` from a fresh ``HttpProcessingError``
    whose cause is the parser's own (``BadStatusLine``, ``LineTooLong``,
    ``InvalidHeader``, ``BadHttpMessage``...); the deepest one is the most exact.
    """
    if not isinstance(exc, aiohttp.ClientResponseError):
        return None
    found: HttpProcessingError | None = None
    for current in _along_causes(exc):
        if isinstance(current, HttpProcessingError):
            found = current
    return found


def _describe_http_parse_error(exc: HttpProcessingError) -> str:
    """One line for a parser error, without the byte dump aiohttp adds ("Invalid character in Content-Length")."""
    if isinstance(exc, LineTooLong):
        return f"a status or header line longer than {exc.args[1]} bytes"
    if isinstance(exc, BadStatusLine):
        return "its status line is not HTTP"
    if isinstance(exc, InvalidHeader):
        return "an invalid header"
    first = exc.message.strip().splitlines()[0] if exc.message.strip() else ""
    # Drop a quoted copy of the bytes ("...: b'Content-Length: abc'").
    first = re.split(r":?\s+b['\"]", first, maxsplit=1)[0]
    first = first.strip().rstrip(":.").strip()
    if not first:
        return "it could not be parsed"
    return first if len(first) <= 120 else first[:117] + "..."
