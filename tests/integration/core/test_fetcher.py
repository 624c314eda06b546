"""The origin fetcher against real HTTP origins on loopback.

Every origin listens on 127.0.0.x or ::1; host names are mapped to loopback
addresses by stub resolvers, and blocked hops are refused before any
connection is attempted (``connect_log`` records every TCP connect).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import itertools
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fileimport import USER_AGENT
from fileimport.core import fetcher as fetcher_module
from fileimport.core.address_guard import AddressGuard, Resolver, create_guarded_session
from fileimport.core.fetcher import FetchedFile, FetchError, NotModified, OriginFetcher
from fileimport.core.settings import Settings
from tests.support.fault_origin import (
    HTML_ERROR_PAGE,
    LAST_MODIFIED,
    PDF_BODY,
    FaultOrigin,
    iter_payload,
    payload,
    serve_fault_origin,
    start_fault_origin,
)

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
MiB = 1024 * 1024


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fetch_allowed_networks": LOOPBACK,
        "fetch_max_attempts": 3,
        "fetch_backoff_base": 0.01,
        "fetch_backoff_max": 0.05,
        "fetch_connect_timeout": 2.0,
        "fetch_read_timeout": 2.0,
        "fetch_deadline_base": 10.0,
        "fetch_chunk_bytes": 64 * 1024,
    }
    values.update(overrides)
    return Settings(**values)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stub_resolver(answers: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


@pytest.fixture
async def origin() -> AsyncIterator[FaultOrigin]:
    async with serve_fault_origin() as running:
        yield running


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def connect_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket of this process tries to connect to (``socket.connect``)."""
    hosts: list[str] = []
    real_connect = socket.socket.connect

    def recording_connect(sock: socket.socket, address: Any) -> None:
        hosts.append(str(address[0]))
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    return hosts


FetchFn = Callable[..., Any]


@pytest.fixture
def fetch(spool_dir: Path) -> FetchFn:
    """``await fetch(url, max_bytes=..., settings=..., guard=..., etag=...)`` with a fresh fetcher."""

    async def run(
        url: str,
        *,
        max_bytes: int = 10 * MiB,
        settings: Settings | None = None,
        guard: AddressGuard | None = None,
        **kwargs: Any,
    ) -> FetchedFile | NotModified:
        async with OriginFetcher(settings or make_settings(), guard=guard, spool_dir=spool_dir) as fetcher:
            return await fetcher.fetch(url, max_bytes=max_bytes, **kwargs)

    return run


async def fetch_error(fetch: FetchFn, url: str, **kwargs: Any) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetch(url, **kwargs)
    return caught.value


def spooled(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.iterdir()) if spool_dir.exists() else []


# -- successful downloads -------------------------------------------------------


async def test_downloads_a_file_to_the_spool(origin: FaultOrigin, fetch: FetchFn, spool_dir: Path) -> None:
    body = payload(200_000)
    result = await fetch(origin.url("/ok?size=200000&type=image/png"))
    assert isinstance(result, FetchedFile)
    assert result.path is not None
    assert result.path.parent == spool_dir
    assert result.path.read_bytes() == body
    assert result.sha256 == sha256(body)
    assert result.size == 200_000
    assert result.head == body[: 64 * 1024]
    assert result.content_type == "image/png"
    assert result.etag == f'"{sha256(body)[:16]}"'
    assert result.last_modified == format_datetime(LAST_MODIFIED, usegmt=True)
    assert result.final_url == origin.url("/ok?size=200000&type=image/png")
    assert result.attempts == 1
    sent = origin.requests[-1].headers
    assert sent["User-Agent"] == USER_AGENT
    assert sent["Accept-Encoding"] == "gzip, deflate"
    assert "If-None-Match" not in sent


async def test_large_body_without_content_length_keeps_memory_flat(
    origin: FaultOrigin, fetch: FetchFn
) -> None:
    size = 8 * MiB
    expected = hashlib.sha256()
    for piece in iter_payload(size):
        expected.update(piece)
    # A first small fetch, so that what the first use of the fetch path
    # allocates once (imports, caches) is not counted as memory the body took.
    await fetch(origin.url("/large?size=100"), max_bytes=16 * MiB)
    tracemalloc.start()
    try:
        result = await fetch(origin.url(f"/large?size={size}"), max_bytes=16 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, FetchedFile)
    assert result.size == size
    assert result.sha256 == expected.hexdigest()
    assert result.path is not None
    assert result.path.stat().st_size == size
    assert peak < 3 * MiB, f"peak Python memory {peak} bytes for an {size}-byte body"


async def test_large_body_is_written_back_on_the_way_and_arrives_whole(
    origin: FaultOrigin, fetch: FetchFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Write-back is started every WRITEBACK_BYTES (here 1 MiB) of the spool,
    # after flushing Python's buffer: the advice must not lose a byte.
    started: list[tuple[int, int]] = []
    real = fetcher_module._START_WRITEBACK
    assert real is not None, "os.posix_fadvise is missing on this platform"

    def recording(fd: int, offset: int, length: int) -> None:
        started.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(fetcher_module, "WRITEBACK_BYTES", MiB)
    monkeypatch.setattr(fetcher_module, "_START_WRITEBACK", recording)
    size = 8 * MiB + 123
    expected = hashlib.sha256()
    for piece in iter_payload(size):
        expected.update(piece)
    result = await fetch(origin.url(f"/large?size={size}"), max_bytes=16 * MiB)
    assert isinstance(result, FetchedFile)
    assert result.sha256 == expected.hexdigest()
    assert result.path is not None
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == expected.hexdigest()
    # Contiguous stretches from the start, each at least 1 MiB, covering all but the tail.
    assert started, "write-back was never started"
    assert started[0][0] == 0
    for (offset, length), (next_offset, _) in itertools.pairwise(started):
        assert length >= MiB
        assert offset + length == next_offset
    assert sum(length for _, length in started) > size - 2 * MiB


async def test_gzip_body_is_decoded(origin: FaultOrigin, fetch: FetchFn) -> None:
    body = payload(150_000)
    result = await fetch(origin.url("/gzip?size=150000"))
    assert isinstance(result, FetchedFile)
    assert result.size == 150_000
    assert result.sha256 == sha256(body)
    assert result.path is not None
    assert result.path.read_bytes() == body


@pytest.mark.parametrize(
    ("size", "parts", "piece"),
    [(150_000, 2, 1_000_000), (150_000, 5, 1_000_000), (40_000, 3, 7), (200_000, 4, 4096)],
    ids=["two-members", "five-members", "headers-split-7-bytes", "4-KiB-pieces"],
)
async def test_gzip_body_of_several_members_is_decoded_whole(
    origin: FaultOrigin, fetch: FetchFn, size: int, parts: int, piece: int
) -> None:
    # RFC 1952 §2.2: a gzip file is a series of members. Decoding only the
    # first one stored a file cut to that member, as success.
    result = await fetch(origin.url(f"/gzip-members?size={size}&parts={parts}&piece={piece}"))
    assert isinstance(result, FetchedFile)
    assert result.size == size
    assert result.sha256 == sha256(payload(size))


async def test_gzip_stream_cut_short_is_truncated_and_retried(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    # The Content-Length matches what was sent, but the compressed stream has
    # no end: the file is incomplete, not a smaller file.
    error = await fetch_error(fetch, origin.url("/gzip-cut?size=150000"))
    assert error.code == "truncated"
    assert "ended before its compressed stream did" in error.reason
    assert error.retryable
    assert error.attempts == 3
    assert spooled(spool_dir) == []


async def test_junk_after_a_gzip_stream_is_a_decoding_error(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    error = await fetch_error(fetch, origin.url("/gzip-junk?size=150000"))
    assert error.code == "decoding_error"
    assert "26 bytes of data after the end of the gzip stream" in error.reason
    assert not error.retryable
    assert spooled(spool_dir) == []


@pytest.mark.parametrize("size", [1, 50_000, 64 * 1024])
async def test_small_body_stays_in_memory(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path, size: int
) -> None:
    # Up to 64 KiB (decoded) the body is all in ``head``: no spool file at all.
    body = payload(size)
    result = await fetch(origin.url(f"/gzip?size={size}"))
    assert isinstance(result, FetchedFile)
    assert result.path is None
    assert result.head == body
    assert result.size == size
    assert result.sha256 == sha256(body)
    assert spooled(spool_dir) == []


async def test_body_one_byte_over_the_head_is_spooled(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    size = 64 * 1024 + 1
    result = await fetch(origin.url(f"/ok?size={size}"))
    assert isinstance(result, FetchedFile)
    assert result.path is not None
    assert result.path.parent == spool_dir
    assert result.path.read_bytes() == payload(size)
    assert result.sha256 == sha256(payload(size))


@pytest.mark.parametrize("codings", ["deflate", "raw-deflate", "gzip,deflate", "deflate,gzip"])
async def test_deflate_and_stacked_codings_are_decoded(
    origin: FaultOrigin, fetch: FetchFn, codings: str
) -> None:
    body = payload(300_000)
    result = await fetch(origin.url(f"/encoded?size=300000&codings={codings}"))
    assert isinstance(result, FetchedFile)
    assert result.size == 300_000
    assert result.sha256 == sha256(body)


@pytest.mark.parametrize(
    ("path", "raw_path", "name"),
    [
        ("/files/my photo é.jpg", "/files/my%20photo%20%C3%A9.jpg", "my photo é.jpg"),
        ("/files/my%20photo%20%C3%A9.jpg", "/files/my%20photo%20%C3%A9.jpg", "my photo é.jpg"),
        (
            "/files/Übersicht 2024/plan (1).pdf",
            "/files/%C3%9Cbersicht%202024/plan%20(1).pdf",
            "Übersicht 2024/plan (1).pdf",
        ),
        # In the query too a space is %20 (RFC 3986), not a form's "+".
        ("/files/a b.jpg?v=1 2&w=é", "/files/a%20b.jpg?v=1%202&w=%C3%A9", "a b.jpg"),
    ],
)
async def test_paths_with_spaces_and_non_ascii_are_percent_encoded(
    origin: FaultOrigin, fetch: FetchFn, path: str, raw_path: str, name: str
) -> None:
    result = await fetch(origin.url(path))
    assert isinstance(result, FetchedFile)
    assert origin.requests[-1].raw_path == raw_path
    assert result.sha256 == sha256(payload(1000, seed=name))
    assert result.final_url == origin.url(raw_path)


async def test_url_without_file_extension(origin: FaultOrigin, fetch: FetchFn) -> None:
    result = await fetch(origin.url("/download/12345"))
    assert isinstance(result, FetchedFile)
    assert result.content_type == "application/pdf"
    assert result.head == PDF_BODY
    assert result.sha256 == sha256(PDF_BODY)


async def test_html_page_labelled_as_jpeg_is_returned_for_sniffing(
    origin: FaultOrigin, fetch: FetchFn
) -> None:
    # The fetcher reports what was sent; the caller sniffs the bytes.
    result = await fetch(origin.url("/html-as-jpeg"))
    assert isinstance(result, FetchedFile)
    assert result.content_type == "image/jpeg"
    assert result.head.startswith(b"<!DOCTYPE html>")
    assert result.sha256 == sha256(HTML_ERROR_PAGE)


async def test_ipv6_loopback_origin(fetch: FetchFn) -> None:
    try:
        running = await start_fault_origin("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        result = await fetch(running.url("/ok?size=1234"))
    finally:
        await running.aclose()
    assert isinstance(result, FetchedFile)
    assert result.sha256 == sha256(payload(1234))
    assert result.final_url.startswith("http://[::1]:")


# -- conditional requests -------------------------------------------------------


async def test_conditional_request_answers_not_modified(origin: FaultOrigin, fetch: FetchFn) -> None:
    first = await fetch(origin.url("/conditional"))
    assert isinstance(first, FetchedFile)
    assert first.etag == '"v1"'

    again = await fetch(origin.url("/conditional"), etag=first.etag)
    assert again == NotModified(etag='"v1"', last_modified=first.last_modified, attempts=1)
    assert origin.requests[-1].headers["If-None-Match"] == '"v1"'

    by_date = await fetch(origin.url("/conditional"), last_modified=first.last_modified)
    assert isinstance(by_date, NotModified)
    assert origin.requests[-1].headers["If-Modified-Since"] == first.last_modified

    changed = await fetch(origin.url("/conditional?etag=%22v2%22"), etag='"v1"')
    assert isinstance(changed, FetchedFile)
    assert changed.etag == '"v2"'
    assert changed.sha256 == sha256(payload(2000, seed='"v2"'))


async def test_unrequested_304_is_an_error(origin: FaultOrigin, fetch: FetchFn, spool_dir: Path) -> None:
    error = await fetch_error(fetch, origin.url("/status/304"))
    assert error.code == "http_304"
    assert not error.retryable


# -- HTTP errors and retries ----------------------------------------------------


@pytest.mark.parametrize(("status", "phrase"), [(404, "Not Found"), (410, "Gone"), (403, "Forbidden")])
async def test_client_errors_are_final(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path, status: int, phrase: str
) -> None:
    url = origin.url(f"/status/{status}")
    error = await fetch_error(fetch, url)
    assert error.code == f"http_{status}"
    assert error.reason == f"The origin answered {status} {phrase} for {url}."
    assert not error.retryable
    assert error.attempts == 1
    assert origin.hits[f"/status/{status}"] == 1
    assert spooled(spool_dir) == []


async def test_server_error_then_success_is_retried(origin: FaultOrigin, fetch: FetchFn) -> None:
    result = await fetch(origin.url("/flaky/a?failures=1&status=500&size=3000"))
    assert isinstance(result, FetchedFile)
    assert result.attempts == 2
    assert result.sha256 == sha256(payload(3000, seed="a"))
    assert origin.hits["/flaky/a"] == 2


async def test_persistent_server_error_gives_up_after_max_attempts(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    error = await fetch_error(fetch, origin.url("/status/500"))
    assert error.code == "http_500"
    assert error.retryable
    assert error.attempts == 3
    assert origin.hits["/status/500"] == 3
    assert spooled(spool_dir) == []


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_transient_statuses_are_retried(origin: FaultOrigin, fetch: FetchFn, status: int) -> None:
    result = await fetch(origin.url(f"/flaky/s{status}?failures=2&status={status}"))
    assert isinstance(result, FetchedFile)
    assert result.attempts == 3


async def test_retry_after_seconds_is_honoured(origin: FaultOrigin, fetch: FetchFn) -> None:
    settings = make_settings(fetch_backoff_max=5.0)
    started = time.monotonic()
    result = await fetch(origin.url("/flaky/ra?failures=1&status=503&retry_after=1"), settings=settings)
    elapsed = time.monotonic() - started
    assert isinstance(result, FetchedFile)
    assert result.attempts == 2
    assert 0.95 <= elapsed < 4


async def test_retry_after_is_capped_by_backoff_max(origin: FaultOrigin, fetch: FetchFn) -> None:
    settings = make_settings(fetch_backoff_max=0.2)
    started = time.monotonic()
    result = await fetch(origin.url("/flaky/cap?failures=1&status=429&retry_after=120"), settings=settings)
    assert isinstance(result, FetchedFile)
    assert result.attempts == 2
    assert time.monotonic() - started < 3


async def test_retry_after_http_date_is_reported(origin: FaultOrigin, fetch: FetchFn) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    url = origin.url(f"/flaky/date?failures=9&status=429&retry_after={quote(when)}")
    error = await fetch_error(fetch, url, settings=make_settings(fetch_max_attempts=1))
    assert error.code == "http_429"
    assert error.retry_after is not None
    assert 25 <= error.retry_after <= 31


# -- broken transfers -----------------------------------------------------------


async def test_connection_reset_mid_body_is_truncated(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    error = await fetch_error(fetch, origin.url("/reset?size=200000"))
    assert error.code == "truncated"
    assert error.retryable
    assert error.attempts == 3
    assert origin.hits["/reset"] == 3
    assert spooled(spool_dir) == []


async def test_body_shorter_than_content_length_is_truncated(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    error = await fetch_error(fetch, origin.url("/short?size=100000"))
    assert error.code == "truncated"
    assert "50000 bytes received of 100000" in error.reason
    assert error.attempts == 3
    assert spooled(spool_dir) == []


async def test_idle_origin_times_out(origin: FaultOrigin, fetch: FetchFn, spool_dir: Path) -> None:
    settings = make_settings(fetch_read_timeout=0.3, fetch_max_attempts=2)
    started = time.monotonic()
    error = await fetch_error(fetch, origin.url("/trickle?size=5&interval=1"), settings=settings)
    assert error.code == "timeout"
    assert error.retryable
    assert error.attempts == 2
    assert time.monotonic() - started < 2.5
    assert spooled(spool_dir) == []


async def test_overall_deadline_cuts_a_slow_download(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    # 1 byte every 50 ms never trips the 2 s idle timeout, but 100 bytes take
    # 5 s while the deadline is 0.4 s + 100 B / 1 MiB/s.
    settings = make_settings(fetch_deadline_base=0.4, fetch_deadline_min_rate=MiB, fetch_max_attempts=1)
    started = time.monotonic()
    error = await fetch_error(fetch, origin.url("/trickle?size=100&interval=0.05"), settings=settings)
    elapsed = time.monotonic() - started
    assert error.code == "timeout"
    assert "deadline" in error.reason
    assert 0.35 <= elapsed < 1.5
    assert spooled(spool_dir) == []


async def test_cancelled_fetch_leaves_no_spool_file(origin: FaultOrigin, spool_dir: Path) -> None:
    async with OriginFetcher(make_settings(), spool_dir=spool_dir) as fetcher:
        with anyio.move_on_after(0.3) as scope:
            await fetcher.fetch(origin.url("/trickle?size=100&interval=0.05"), max_bytes=MiB)
    assert scope.cancelled_caught
    assert spooled(spool_dir) == []


async def test_closed_port_is_a_connection_error(fetch: FetchFn, spool_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await fetch_error(fetch, f"http://127.0.0.1:{port}/ok")
    assert error.code == "connection_error"
    assert error.retryable
    assert error.attempts == 3


@contextlib.asynccontextmanager
async def raw_origin(*replies: bytes) -> AsyncIterator[tuple[str, list[int]]]:
    """An origin on 127.0.0.1 that reads a request and writes ``replies`` as sent, 50 ms apart, then closes.

    Yields its base URL and a one-item list counting the connections it took.
    """
    connections = [0]
    handlers: list[asyncio.Task[None]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            for index, reply in enumerate(replies):
                if index:
                    await asyncio.sleep(0.05)
                writer.write(reply)
                await writer.drain()
        writer.close()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.ensure_future(answer(reader, writer)))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections
    finally:
        server.close()
        await asyncio.gather(*handlers)


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello", "Invalid character in Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "Duplicate Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "Invalid character in chunk size",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "its status line is not HTTP"),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            "a status or header line longer than 8190 bytes",
        ),
    ],
    ids=["bad-content-length", "duplicate-content-length", "bad-chunk-size", "not-http", "header-too-long"],
)
async def test_malformed_response_is_invalid_response_and_final(
    fetch: FetchFn, spool_dir: Path, reply: bytes, problem: str
) -> None:
    async with raw_origin(reply) as (base_url, connections):
        error = await fetch_error(fetch, f"{base_url}/x")
    assert error.code == "invalid_response"
    assert error.reason == f"The origin at {base_url} sent a malformed HTTP response ({problem})."
    assert not error.retryable
    assert error.attempts == 1
    assert connections == [1]
    assert spooled(spool_dir) == []


async def test_malformed_chunk_after_the_body_started_is_invalid_response_at_once(
    fetch: FetchFn, spool_dir: Path
) -> None:
    # The first chunk is fine; the next chunk size line is garbage. aiohttp's
    # parser fails inside the connection's protocol and closes it, without
    # failing the body's reader: the download must end with that parse error,
    # not wait for its deadline (60 s) and be retried as a timeout.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    started = time.monotonic()
    async with raw_origin(head, b"zz\r\nworld\r\n", b"") as (base_url, connections):
        error = await fetch_error(fetch, f"{base_url}/x")
    assert time.monotonic() - started < 10
    assert connections == [1]
    assert error.code == "invalid_response", error.reason
    assert error.reason == (
        f"The origin at {base_url} sent a malformed HTTP response "
        "(Invalid character in chunk size, after 5 bytes of body)."
    )
    assert not error.retryable
    assert error.attempts == 1
    assert spooled(spool_dir) == []


async def test_close_in_the_middle_of_the_headers_is_a_retried_connection_error(fetch: FetchFn) -> None:
    # The status line arrives in pieces, then the origin closes mid-header:
    # a lost connection, not a malformed answer, and no parser object in the reason.
    async with raw_origin(b"HTTP/1.", b"1 200 OK\r\n", b"Content-Le") as (base_url, connections):
        error = await fetch_error(fetch, f"{base_url}/x")
    assert error.code == "connection_error"
    assert error.retryable
    assert error.attempts == 3
    assert connections[0] >= 3  # aiohttp itself may reconnect once per try
    assert error.reason == (
        f"The connection to {base_url} failed before it answered: "
        "the origin closed the connection before its response headers ended."
    )


# -- size limits ----------------------------------------------------------------


async def test_content_length_over_limit_is_too_large_before_download(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    error = await fetch_error(fetch, origin.url("/ok?size=5000"), max_bytes=4999)
    assert error.code == "too_large"
    assert "5000 bytes (Content-Length)" in error.reason
    assert not error.retryable
    assert error.attempts == 1
    assert spooled(spool_dir) == []


async def test_exact_limit_is_accepted(origin: FaultOrigin, fetch: FetchFn) -> None:
    result = await fetch(origin.url("/ok?size=5000"), max_bytes=5000)
    assert isinstance(result, FetchedFile)
    assert result.size == 5000


async def test_body_without_length_over_limit_is_too_large(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    error = await fetch_error(fetch, origin.url(f"/large?size={4 * MiB}"), max_bytes=MiB)
    assert error.code == "too_large"
    assert error.attempts == 1
    assert spooled(spool_dir) == []


async def test_gzip_bomb_is_cut_off_after_decoding(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path
) -> None:
    # ~10 KiB on the wire, 10 MB once inflated.
    error = await fetch_error(fetch, origin.url("/gzip-bomb?size=10000000"), max_bytes=MiB)
    assert error.code == "too_large"
    assert "after decoding" in error.reason
    assert spooled(spool_dir) == []


@pytest.mark.parametrize("codings", ["gzip", "gzip,gzip"])
async def test_a_compressed_body_that_inflates_a_thousandfold_keeps_memory_flat(
    origin: FaultOrigin, fetch: FetchFn, codings: str
) -> None:
    """One chunk off the socket inflates to hundreds of MB: it is written out as it inflates."""
    size = 64 * MiB  # zeros: about 64 KiB on the wire in one gzip layer, far less in two
    await fetch(origin.url("/large?size=100"), max_bytes=16 * MiB)  # what a first fetch allocates once
    tracemalloc.start()
    try:
        result = await fetch(origin.url(f"/zeros?size={size}&codings={codings}"), max_bytes=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, FetchedFile)
    assert result.size == size
    assert result.sha256 == hashlib.sha256(bytes(size)).hexdigest()
    assert peak < 6 * MiB, f"peak Python memory {peak} bytes for a {size}-byte body"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "compress"])
async def test_undecodable_body_is_a_decoding_error(
    origin: FaultOrigin, fetch: FetchFn, spool_dir: Path, coding: str
) -> None:
    error = await fetch_error(fetch, origin.url(f"/bad-encoding?coding={coding}"))
    assert error.code == "decoding_error"
    assert coding in error.reason
    assert not error.retryable
    assert spooled(spool_dir) == []


# -- redirects ------------------------------------------------------------------


async def test_redirect_chain_within_the_limit(origin: FaultOrigin, fetch: FetchFn) -> None:
    result = await fetch(origin.url("/chain/5?size=777"))
    assert isinstance(result, FetchedFile)
    assert result.final_url == origin.url("/chain/0?size=777")
    assert result.sha256 == sha256(payload(777))
    assert result.attempts == 1


async def test_redirect_chain_of_six_is_too_many(origin: FaultOrigin, fetch: FetchFn) -> None:
    error = await fetch_error(fetch, origin.url("/chain/6"))
    assert error.code == "too_many_redirects"
    assert not error.retryable
    assert error.attempts == 1
    assert origin.hits["/chain/0"] == 0


@pytest.mark.parametrize("path", ["/loop", "/loop/a"])
async def test_redirect_loop_is_too_many_redirects(origin: FaultOrigin, fetch: FetchFn, path: str) -> None:
    error = await fetch_error(fetch, origin.url(path))
    assert error.code == "too_many_redirects"
    assert "loop" in error.reason
    assert sum(origin.hits.values()) <= 2


async def test_redirect_to_loopback_address_is_followed_when_allowed(
    origin: FaultOrigin, fetch: FetchFn
) -> None:
    target = f"http://127.0.0.1:{origin.port}/ok?size=10"
    result = await fetch(origin.url(f"/redirect?to={quote(target, safe='')}&status=301"))
    assert isinstance(result, FetchedFile)
    assert result.final_url == target


async def test_public_origin_redirecting_to_loopback_is_blocked(
    connect_log: list[str], fetch: FetchFn, spool_dir: Path
) -> None:
    # "public.test" stands for an internet origin: it resolves to 127.0.0.2,
    # the only address the guard allows; its redirect to 127.0.0.1 is refused.
    async with serve_fault_origin("127.0.0.2") as public:
        guard = AddressGuard(
            allowed_networks=[ipaddress.ip_network("127.0.0.2/32")],
            resolver=stub_resolver({"public.test": ["127.0.0.2"]}),
        )
        target = f"http://127.0.0.1:{public.port}/ok"
        url = f"http://public.test:{public.port}/redirect?to={quote(target, safe='')}"
        error = await fetch_error(fetch, url, guard=guard)
    assert error.code == "blocked_address"
    assert "127.0.0.1 is a loopback address" in error.reason
    assert not error.retryable
    assert public.hits["/ok"] == 0
    assert connect_log == ["127.0.0.2"]
    assert spooled(spool_dir) == []


async def test_redirect_to_cloud_metadata_is_blocked_before_connecting(
    origin: FaultOrigin, connect_log: list[str], fetch: FetchFn
) -> None:
    guard = AddressGuard(allowed_networks=[ipaddress.ip_network("127.0.0.1/32")])
    target = "http://169.254.169.254/latest/meta-data/"
    error = await fetch_error(fetch, origin.url(f"/redirect?to={quote(target, safe='')}"), guard=guard)
    assert error.code == "blocked_address"
    assert "169.254.169.254 is a link-local address" in error.reason
    assert error.attempts == 1
    assert "169.254.169.254" not in connect_log
    assert connect_log == ["127.0.0.1"]


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/file.jpg", "file:///etc/passwd", "gopher://x/"])
async def test_redirect_to_other_schemes_is_refused(origin: FaultOrigin, fetch: FetchFn, target: str) -> None:
    error = await fetch_error(fetch, origin.url(f"/redirect?to={quote(target, safe='')}"))
    assert error.code == "unsupported_scheme"
    assert not error.retryable


async def test_redirect_without_location(origin: FaultOrigin, fetch: FetchFn) -> None:
    error = await fetch_error(fetch, origin.url("/redirect?to="))
    assert error.code == "http_302"
    assert "without a Location" in error.reason


async def test_credentials_and_cookies_stay_with_their_origin(origin: FaultOrigin, fetch: FetchFn) -> None:
    guard = AddressGuard(
        allowed_networks=LOOPBACK,
        resolver=stub_resolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]}),
    )
    basic = "Basic " + base64.b64encode(b"user:secret").decode()
    port = origin.port

    same = f"http://user:secret@a.test:{port}/redirect?cookie=c1&to=/echo"
    await fetch(same, guard=guard)
    first, second = origin.requests[-2:]
    assert first.headers["Authorization"] == basic
    assert second.path == "/echo"
    assert second.headers["Authorization"] == basic  # same origin keeps it
    assert "Cookie" not in second.headers  # cookies are never stored

    other = f"http://b.test:{port}/echo"
    cross = f"http://user:secret@a.test:{port}/redirect?cookie=c2&to={quote(other, safe='')}"
    result = await fetch(cross, guard=guard)
    first, second = origin.requests[-2:]
    assert first.headers["Authorization"] == basic
    assert second.headers["Host"] == f"b.test:{port}"
    assert "Authorization" not in second.headers
    assert "Cookie" not in second.headers
    assert isinstance(result, FetchedFile)
    assert "secret" not in result.final_url


# -- URLs and the address guard -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("not a url", "invalid_url"),
        ("/relative/path.jpg", "invalid_url"),
        ("http:///no-host.jpg", "invalid_url"),
        ("http://exa mple.com/a.jpg", "invalid_url"),
        ("http://[::1/a.jpg", "invalid_url"),
        ("ftp://127.0.0.1/a.jpg", "unsupported_scheme"),
        ("file:///etc/passwd", "unsupported_scheme"),
    ],
)
async def test_bad_urls_are_refused_without_connecting(
    connect_log: list[str], fetch: FetchFn, url: str, code: str
) -> None:
    error = await fetch_error(fetch, url)
    assert error.code == code
    assert not error.retryable
    assert connect_log == []


async def test_unknown_host_is_host_not_found(connect_log: list[str], fetch: FetchFn) -> None:
    guard = AddressGuard(allowed_networks=LOOPBACK, resolver=stub_resolver({}))
    error = await fetch_error(fetch, "http://nowhere.test/a.jpg", guard=guard)
    assert error.code == "host_not_found"
    assert "nowhere.test" in error.reason
    assert error.attempts == 1
    assert connect_log == []


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/a.jpg", "http://[fd00::1]/a.jpg", "http://169.254.169.254/"]
)
async def test_private_literals_are_blocked_before_connecting(
    connect_log: list[str], fetch: FetchFn, url: str
) -> None:
    error = await fetch_error(fetch, url)
    assert error.code == "blocked_address"
    assert "FILEIMPORT_FETCH_ALLOWED_NETWORKS" in error.reason
    assert connect_log == []


async def test_loopback_is_blocked_by_default(
    origin: FaultOrigin, connect_log: list[str], fetch: FetchFn
) -> None:
    error = await fetch_error(fetch, origin.url("/ok"), settings=make_settings(fetch_allowed_networks=[]))
    assert error.code == "blocked_address"
    assert origin.hits["/ok"] == 0
    assert connect_log == []


async def test_allowed_host_is_reached_but_its_address_stays_blocked_as_a_literal(
    origin: FaultOrigin, connect_log: list[str], fetch: FetchFn
) -> None:
    # files.internal is allowed by name; 127.0.0.1 is in no allowed network.
    guard = AddressGuard(
        allowed_hosts=["files.internal"], resolver=stub_resolver({"files.internal": ["127.0.0.1"]})
    )
    result = await fetch(f"http://files.internal:{origin.port}/ok?size=10", guard=guard)
    assert isinstance(result, FetchedFile)

    literal = f"http://127.0.0.1:{origin.port}/ok?size=20"
    redirecting = f"http://files.internal:{origin.port}/redirect?to={quote(literal, safe='')}"
    error = await fetch_error(fetch, redirecting, guard=guard)
    assert error.code == "blocked_address"
    assert "127.0.0.1 is a loopback address" in error.reason
    assert origin.hits["/ok"] == 1
    assert connect_log == ["127.0.0.1", "127.0.0.1"]  # one connection per fetcher, both to files.internal


async def test_dns_rebinding_cannot_reach_a_blocked_address(connect_log: list[str], spool_dir: Path) -> None:
    """The resolver answers the allowed 127.0.0.2 first and the blocked 127.0.0.1
    afterwards; an origin listens on both. Only the checked answer is used."""
    good = await start_fault_origin("127.0.0.2")
    try:
        try:
            bad = await start_fault_origin("127.0.0.1", good.port)
        except OSError:
            pytest.skip("port taken on 127.0.0.1")
        try:
            calls: list[str] = []

            async def rebinding(host: str, port: int) -> list[str]:
                calls.append(host)
                return ["127.0.0.2"] if len(calls) == 1 else ["127.0.0.1"]

            guard = AddressGuard(allowed_networks=[ipaddress.ip_network("127.0.0.2/32")], resolver=rebinding)
            url = f"http://rebind.test:{good.port}/ok?size=100"
            async with OriginFetcher(make_settings(), guard=guard, spool_dir=spool_dir) as fetcher:
                result = await fetcher.fetch(url, max_bytes=MiB)
            assert isinstance(result, FetchedFile)
            assert calls == ["rebind.test"]  # resolved once for the one connection
            assert good.hits["/ok"] == 1
            assert good.requests[-1].local_address == "127.0.0.2"
            assert good.requests[-1].headers["Host"] == f"rebind.test:{good.port}"

            # A new connection resolves again and gets the blocked answer.
            async with OriginFetcher(make_settings(), guard=guard, spool_dir=spool_dir) as fetcher:
                with pytest.raises(FetchError) as caught:
                    await fetcher.fetch(url, max_bytes=MiB)
            assert caught.value.code == "blocked_address"
            assert calls == ["rebind.test", "rebind.test"]
            assert bad.hits["/ok"] == 0
            assert connect_log == ["127.0.0.2"]
        finally:
            await bad.aclose()
    finally:
        await good.aclose()


# -- politeness -----------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
async def test_per_origin_concurrency_limit(origin: FaultOrigin, spool_dir: Path, limit: int) -> None:
    settings = make_settings(fetch_per_origin_concurrency=limit)
    results: list[FetchedFile | NotModified] = []
    async with OriginFetcher(settings, spool_dir=spool_dir) as fetcher:

        async def one(i: int) -> None:
            url = origin.url(f"/trickle?size=4&interval=0.05&n={i}")
            results.append(await fetcher.fetch(url, max_bytes=MiB))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
    assert len(results) == 3
    assert origin.max_in_flight == limit


async def test_waiting_for_an_origin_slot_does_not_count_against_the_deadline(
    origin: FaultOrigin, spool_dir: Path
) -> None:
    # Each download takes ~0.4 s of a 0.7 s deadline; the second one first
    # waits ~0.4 s for the single slot and must still succeed.
    settings = make_settings(
        fetch_per_origin_concurrency=1,
        fetch_deadline_base=0.7,
        fetch_deadline_min_rate=MiB,
        fetch_max_attempts=1,
    )
    results: list[FetchedFile | NotModified] = []
    async with OriginFetcher(settings, spool_dir=spool_dir) as fetcher:

        async def one(i: int) -> None:
            url = origin.url(f"/trickle?size=4&interval=0.1&n={i}")
            results.append(await fetcher.fetch(url, max_bytes=4))

        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(one, i)
    assert [type(r) for r in results] == [FetchedFile, FetchedFile]
    assert origin.max_in_flight == 1


# -- TLS through the guarded session --------------------------------------------


def tls_contexts(tmp_path: Path, hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for ``hostname`` and a client that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_tls_uses_the_host_name_while_connecting_to_the_checked_address(
    tmp_path: Path, connect_log: list[str]
) -> None:
    server_ctx, client_ctx = tls_contexts(tmp_path, "files.test")
    async with serve_fault_origin(ssl_context=server_ctx) as secure:
        guard = AddressGuard(allowed_networks=LOOPBACK, resolver=stub_resolver({"files.test": ["127.0.0.1"]}))
        async with create_guarded_session(guard, ssl_context=client_ctx) as session:
            async with session.get(f"https://files.test:{secure.port}/ok?size=321") as response:
                status = response.status
                body = await response.read()
            # The certificate names files.test only: reaching it by address fails.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{secure.port}/ok")
    assert status == 200
    assert body == payload(321)
    assert secure.requests[0].headers["Host"] == f"files.test:{secure.port}"
    assert connect_log == ["127.0.0.1", "127.0.0.1"]


async def test_https_to_a_plain_http_origin_is_a_final_tls_error(origin: FaultOrigin, fetch: FetchFn) -> None:
    base = f"https://127.0.0.1:{origin.port}"
    error = await fetch_error(fetch, f"{base}/ok")
    assert error.code == "tls_error"
    assert error.reason == f"The TLS handshake with {base} failed: wrong version number (is it plain HTTP?)."
    assert not error.retryable
    assert error.attempts == 1


async def test_certificate_that_does_not_verify_is_a_final_tls_error(tmp_path: Path, fetch: FetchFn) -> None:
    server_ctx, _ = tls_contexts(tmp_path, "files.test")
    async with serve_fault_origin(ssl_context=server_ctx) as secure:
        error = await fetch_error(fetch, f"https://127.0.0.1:{secure.port}/ok")
    assert error.code == "tls_error"
    assert error.reason == (
        f"The TLS handshake with https://127.0.0.1:{secure.port} failed: "
        "certificate verify failed: self-signed certificate."
    )
    assert not error.retryable
    assert error.attempts == 1
    assert secure.hits["/ok"] == 0
