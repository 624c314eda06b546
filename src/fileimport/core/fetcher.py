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
- Transient, retried: connection errors, timeouts, truncated bodies, 408, 429
  and 5xx. Final: other 4xx, blocked addresses, unknown hosts, size and
  redirect limits, invalid URLs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import math
import os
import random
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import Cookie, CookieJar
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import anyio
import httpx2
import structlog

from fileimport import USER_AGENT
from fileimport.core.address_guard import (
    AddressGuard,
    BlockedAddressError,
    HostNotFoundError,
    create_guarded_transport,
    guard_from_settings,
)
from fileimport.core.settings import Settings
from fileimport.core.urls import host_problem

log = structlog.get_logger(__name__)

HEAD_BYTES = 64 * 1024
"""Bytes kept in ``FetchedFile.head`` for MIME sniffing."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 429})
ACCEPTED_CONTENT_CODINGS = frozenset({"identity", "gzip", "deflate"})


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded body, spooled to local disk.

    ``path`` belongs to the caller, who deletes it. ``size`` is in bytes
    after content decoding (gzip/deflate), ``sha256`` the hex digest of those
    bytes, ``head`` their first 64 KiB. ``content_type``, ``etag`` and
    ``last_modified`` are the final response's headers as sent; ``final_url``
    is the URL after redirects; ``attempts`` counts tries, 1 when the first
    one succeeded.
    """

    path: Path
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
    ``timeout``, ``http_<status>`` (``http_404``), ``too_large``,
    ``truncated``, ``too_many_redirects`` or ``decoding_error``.
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


class _NoCookies(CookieJar):
    """Stores nothing: one client serves every import, cookies must not leak between them."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


@dataclass
class _OriginSlot:
    semaphore: anyio.Semaphore
    users: int = 0


class OriginFetcher:
    """Downloads files from origins; one instance per process, shared by tasks.

    ``settings`` supplies the ``fetch_*`` limits, ``guard`` the address guard
    (default: ``guard_from_settings(settings)``), ``spool_dir`` the folder for
    downloads (created when missing). Use as an async context manager or call
    ``aclose()``.
    """

    def __init__(self, settings: Settings, *, guard: AddressGuard | None = None, spool_dir: Path) -> None:
        self._settings = settings
        self._guard = guard or guard_from_settings(settings)
        self._spool_dir = spool_dir
        self._origins: dict[tuple[str, str, int], _OriginSlot] = {}
        # Unlimited pool: concurrency is bounded by the worker and, per
        # origin, by the slots below; a pool limit would only add pool timeouts.
        transport = create_guarded_transport(self._guard, max_connections=None)
        self._client = httpx2.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            cookies=_NoCookies(),
            timeout=httpx2.Timeout(
                connect=settings.fetch_connect_timeout,
                read=settings.fetch_read_timeout,
                write=settings.fetch_read_timeout,
                pool=None,
            ),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        )

    async def __aenter__(self) -> Self:
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
        await self._client.aclose()

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> FetchedFile | NotModified:
        """Download ``url`` to a new file in the spool folder.

        ``max_bytes`` limits both ``Content-Length`` and the bytes received
        after decoding. ``etag`` / ``last_modified`` (header values from an
        earlier download) make the request conditional; a 304 then returns
        ``NotModified``. Retries transient failures up to
        ``fetch_max_attempts`` tries in all. Raises ``FetchError``; no spool
        file is left behind on failure or cancellation.
        """
        target = parse_http_url(url)
        await anyio.Path(self._spool_dir).mkdir(parents=True, exist_ok=True)
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
                result = await self._attempt(target, max_bytes=max_bytes, conditional=conditional)
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
        self, url: httpx2.URL, *, max_bytes: int, conditional: dict[str, str]
    ) -> FetchedFile | NotModified:
        """One try: the redirect chain and the body, under the overall deadline."""
        started = anyio.current_time()
        with anyio.CancelScope(deadline=started + self._deadline_seconds(max_bytes)) as scope:
            return await self._follow(url, max_bytes=max_bytes, conditional=conditional, scope=scope)
        seconds = scope.deadline - started
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
        url: httpx2.URL,
        *,
        max_bytes: int,
        conditional: dict[str, str],
        scope: anyio.CancelScope,
    ) -> FetchedFile | NotModified:
        first_origin = _origin_key(url)
        credentials = (url.username, url.password) if url.userinfo else None
        url = first_url = url.copy_with(userinfo=b"")
        visited = {str(url)}
        redirects = 0
        while True:
            auth = (
                httpx2.BasicAuth(*credentials) if credentials and _origin_key(url) == first_origin else None
            )
            # Queueing behind other downloads from this origin is not the
            # origin's slowness: the deadline clock stops while we wait.
            remaining = scope.deadline - anyio.current_time()
            scope.deadline = math.inf
            async with self._origin_slot(_origin_key(url)):
                scope.deadline = anyio.current_time() + remaining
                started = anyio.current_time()
                response = await self._send(url, conditional, auth)
                try:
                    if response.status_code not in REDIRECT_STATUSES:
                        return await self._receive(
                            response,
                            url,
                            max_bytes=max_bytes,
                            conditional=conditional,
                            scope=scope,
                            started=started,
                        )
                    next_url = _redirect_target(response, url)
                finally:
                    await response.aclose()
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
            log.debug("fetch.redirect", status=response.status_code, url=str(url), location=str(next_url))
            visited.add(str(next_url))
            url = next_url

    @contextlib.asynccontextmanager
    async def _origin_slot(self, key: tuple[str, str, int]) -> AsyncIterator[None]:
        """Hold one of ``fetch_per_origin_concurrency`` slots for ``key``."""
        slot = self._origins.get(key)
        if slot is None:
            slot = self._origins[key] = _OriginSlot(
                anyio.Semaphore(self._settings.fetch_per_origin_concurrency)
            )
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._origins[key]

    async def _send(
        self, url: httpx2.URL, conditional: dict[str, str], auth: httpx2.BasicAuth | None
    ) -> httpx2.Response:
        """Send one GET and return the streaming response (headers read)."""
        request = self._client.build_request("GET", url, headers=conditional)
        origin = _display_origin(url)
        try:
            return await self._client.send(request, stream=True, auth=auth)
        except BlockedAddressError as exc:
            raise FetchError("blocked_address", f"{_display(url)} was not fetched: {exc}.") from exc
        except HostNotFoundError as exc:
            raise FetchError(
                "host_not_found",
                f"The host {exc.host} in {_display(url)} does not resolve to any address; check the URL.",
            ) from exc
        except httpx2.ConnectTimeout as exc:
            raise FetchError(
                "timeout",
                f"Connecting to {origin} timed out after {self._settings.fetch_connect_timeout:g} seconds.",
                retryable=True,
            ) from exc
        except httpx2.TimeoutException as exc:
            raise FetchError(
                "timeout",
                f"{origin} did not answer the request for {_display(url)} within "
                f"{self._settings.fetch_read_timeout:g} seconds.",
                retryable=True,
            ) from exc
        except httpx2.UnsupportedProtocol as exc:
            raise FetchError("unsupported_scheme", f"{_display(url)} is not an http or https URL.") from exc
        except httpx2.TransportError as exc:
            raise FetchError(
                "connection_error",
                f"The connection to {origin} failed before it answered: {describe_network_error(exc)}.",
                retryable=True,
            ) from exc

    async def _receive(
        self,
        response: httpx2.Response,
        url: httpx2.URL,
        *,
        max_bytes: int,
        conditional: dict[str, str],
        scope: anyio.CancelScope,
        started: float,
    ) -> FetchedFile | NotModified:
        """Turn a non-redirect answer into a result, streaming a 2xx body to disk."""
        status = response.status_code
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

        codings = [
            c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",") if c.strip()
        ]
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
        scope.deadline = min(scope.deadline, started + self._deadline_seconds(expected))

        spool = _Spool(self._spool_dir)
        done = False
        try:
            size = 0
            head = bytearray()
            # Pieces are handed to the writer thread as they came: no copies.
            pending: list[bytes] = []
            pending_bytes = 0
            chunk_bytes = self._settings.fetch_chunk_bytes
            try:
                # Decoded pieces as they arrive; httpx2 inflates gzip/deflate
                # in bounded (1 MiB) steps, so a bomb is cut off early.
                async for piece in response.aiter_bytes():
                    size += len(piece)
                    if size > max_bytes:
                        raise FetchError(
                            "too_large",
                            f"The file at {_display(url)} is over the limit of {max_bytes} bytes "
                            f"(more than {max_bytes} bytes received"
                            f"{' after decoding' if codings else ''}).",
                        )
                    if len(head) < HEAD_BYTES:
                        head += piece[: HEAD_BYTES - len(head)]
                    pending.append(piece)
                    pending_bytes += len(piece)
                    if pending_bytes >= chunk_bytes:
                        await anyio.to_thread.run_sync(spool.write, pending)
                        pending, pending_bytes = [], 0
                # A small body costs one hop to a thread: create, write, close.
                path = await anyio.to_thread.run_sync(spool.finish, pending)
            except httpx2.TimeoutException as exc:
                raise FetchError(
                    "timeout",
                    f"The origin sent nothing for {self._settings.fetch_read_timeout:g} seconds "
                    f"while sending {_display(url)} ({_bytes(size)} received).",
                    retryable=True,
                ) from exc
            except (httpx2.RemoteProtocolError, httpx2.NetworkError) as exc:
                raise FetchError(
                    "truncated",
                    f"The connection closed before the whole body of {_display(url)} arrived "
                    f"({_bytes(size)} received{_of_length(content_length)}): {describe_network_error(exc)}.",
                    retryable=True,
                ) from exc
            except httpx2.DecodingError as exc:
                raise FetchError(
                    "decoding_error",
                    f"The {', '.join(codings)} body of {_display(url)} could not be decoded: "
                    f"{_describe(exc)}.",
                ) from exc
            if content_length is not None and not codings and response.num_bytes_downloaded < content_length:
                raise FetchError(
                    "truncated",
                    f"The body of {_display(url)} ended after {response.num_bytes_downloaded} "
                    f"of {content_length} bytes.",
                    retryable=True,
                )
            done = True
        finally:
            if not done:
                # Synchronous on purpose: it must also run when cancelled.
                spool.discard()
        log.debug("fetch.received", url=str(url), size=size, path=str(path))
        return FetchedFile(
            path=path,
            size=size,
            sha256=spool.sha256(),
            head=bytes(head),
            content_type=response.headers.get("Content-Type"),
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            final_url=str(url),
            attempts=0,
        )


class _Spool:
    """A spool file created on first write (in a worker thread), so a small body costs one hop.

    The SHA-256 is updated in the same thread as the write: hashlib releases
    the GIL, so hashing and writing a chunk overlap with receiving the next.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._opened: tuple[IO[bytes], Path] | None = None
        self._digest = hashlib.sha256()

    def sha256(self) -> str:
        """Hex SHA-256 of every byte written."""
        return self._digest.hexdigest()

    def _open(self) -> tuple[IO[bytes], Path]:
        if self._opened is None:
            fd, name = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=self._folder)
            self._opened = (os.fdopen(fd, "wb"), Path(name))
        return self._opened

    def write(self, pieces: list[bytes]) -> None:
        file = self._open()[0]
        for piece in pieces:
            self._digest.update(piece)
            file.write(piece)

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


def parse_http_url(value: str) -> httpx2.URL:
    """``value`` as an absolute http(s) URL that a connection can be made to.

    The host must be a valid name or IP address and the port within 1-65535;
    nothing is resolved. Raises ``FetchError`` with code ``invalid_url`` or
    ``unsupported_scheme``.
    """
    try:
        url = httpx2.URL(value)
    except (httpx2.InvalidURL, ValueError, TypeError) as exc:
        raise FetchError("invalid_url", f"{value!r} is not a valid URL: {exc}.") from exc
    if url.scheme and url.scheme not in ("http", "https"):
        raise FetchError("unsupported_scheme", f"{value!r} is not an http or https URL.")
    problem = _url_problem(url)
    if problem:
        raise FetchError("invalid_url", f"{value!r} is not a valid URL: {problem}.")
    return url


def _url_problem(url: httpx2.URL) -> str | None:
    if not url.scheme:
        return "it is not an absolute http or https URL"
    # The same host and port rules as the API's check of posted URLs.
    problem = host_problem(url.netloc.decode("ascii", "replace"))
    if problem is None:
        return None
    if "port" in problem:
        return "its port is out of range"
    return "it names no host" if problem == "must name a host" else "its host is not a valid name or address"


def _redirect_target(response: httpx2.Response, url: httpx2.URL) -> httpx2.URL:
    """The next hop of a redirect (RFC 9110 §10.2.2), validated."""
    status = response.status_code
    raw = next((value for key, value in response.headers.raw if key.lower() == b"location"), None)
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
        target = url.join(location)
    except (httpx2.InvalidURL, ValueError, TypeError) as exc:
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
    return target.copy_with(userinfo=b"", fragment=None)


def _content_length(response: httpx2.Response) -> int | None:
    """``Content-Length`` as bytes, or None when absent or not a single number (RFC 9110 §8.6)."""
    values = {v.strip() for v in response.headers.get_list("Content-Length", split_commas=True)}
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


def _origin_key(url: httpx2.URL) -> tuple[str, str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.scheme, url.raw_host.decode("ascii", "replace").lower(), port)


def _display(url: httpx2.URL) -> str:
    """The URL without credentials, for messages."""
    return str(url.copy_with(userinfo=b"")) if url.userinfo else str(url)


def _display_origin(url: httpx2.URL) -> str:
    scheme, host, port = _origin_key(url)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _status_text(status: int) -> str:
    phrase = httpx2.codes.get_reason_phrase(status)
    return f"{status} {phrase}" if phrase else str(status)


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _of_length(content_length: int | None) -> str:
    return f" of {content_length}" if content_length is not None else ""


def describe_network_error(exc: BaseException) -> str:
    """A short description of a failed connection or transfer, for a person.

    httpx2 often wraps the operating system's error in errors whose own text
    is empty or generic ("All connection attempts failed"); the OS's words
    ("Connection refused", "Connection reset by peer") say more, so the first
    error along the chain of causes that carries an errno wins.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno)
        current = current.__cause__ or current.__context__
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text or type(exc).__name__
