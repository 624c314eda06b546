"""One batch against every kind of misbehaving origin, through the running service.

The fault origin listens on 127.0.0.2 and the address guard allows only
127.0.0.2/32, so a redirect to 127.0.0.1 (the service itself) or to the cloud
metadata address 169.254.169.254 is refused before any connection is made.
Each file must end with its own result: transient faults succeed after
retries, the rest fail with a stable ``code`` and a ``reason`` naming the
problem, and the good files are stored byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import pytest
from pydantic import ByteSize
from pytest_httpserver import HTTPServer

from fileimport import USER_AGENT
from fileimport.projects.config import MediaKind, MediaTypeConfig, ProjectConfig
from tests.support.fault_origin import (
    PDF_BODY,
    FaultOrigin,
    payload,
    serve_fault_origin,
)
from tests.support.images import png_bytes
from tests.support.service import RunningService, run_service

ORIGIN_HOST = "127.0.0.2"
FILE_LIMIT = 100_000
IMAGE_LIMIT = 1_000_000
JOB_TIME_LIMIT = 45.0

CONFIG = ProjectConfig(
    media_types=(
        MediaTypeConfig(
            handle="image",
            type=MediaKind.IMAGE,
            max_file_size=ByteSize(IMAGE_LIMIT),
            allowed_mime_types=("image/png", "image/jpeg"),
        ),
        MediaTypeConfig(handle="file", type=MediaKind.FILE, max_file_size=ByteSize(FILE_LIMIT)),
    )
)

FAST_RETRIES: dict[str, Any] = {
    "fetch_max_attempts": 3,
    "fetch_backoff_base": 0.01,
    "fetch_backoff_max": 2,
    "fetch_read_timeout": 1.5,
    # The 1 byte/s trickle never leaves the connection idle for 1.5 s; only
    # the overall deadline (base + size / rate) stops it.
    "fetch_deadline_base": 2.5,
}

PICTURE = png_bytes(40, 30)
UNICODE_NAME = "Ünïcödé file name €.bin"
TRIES = "gave up after 3 tries"


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Case:
    """One file of the batch and the result a user must see for it.

    ``code`` None means ``success`` with exactly ``body`` stored; otherwise
    ``failed`` with that code and every string of ``reason`` in the reason.
    """

    id: str
    url: str
    code: str | None = None
    reason: tuple[str, ...] = ()
    body: bytes | None = None
    media_type: str | None = None


@pytest.fixture
def image_origin() -> Iterator[HTTPServer]:
    """Real images (a good PNG and a pixel bomb), also on 127.0.0.2."""
    server = HTTPServer(host=ORIGIN_HOST, port=0)
    server.expect_request("/picture.png").respond_with_data(PICTURE, content_type="image/png")
    server.expect_request("/bomb.png").respond_with_data(png_header(20_000, 20_000), content_type="image/png")
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture
async def fault_origin() -> AsyncIterator[FaultOrigin]:
    async with serve_fault_origin(ORIGIN_HOST) as origin:
        yield origin


@pytest.fixture
async def guarded_service(tmp_path: Path) -> AsyncIterator[RunningService]:
    async with run_service(
        tmp_path / "var", config=CONFIG, fetch_allowed_networks=f"{ORIGIN_HOST}/32", **FAST_RETRIES
    ) as running:
        yield running


def redirect(origin: FaultOrigin, to: str) -> str:
    return origin.url("/redirect?" + urlencode({"to": to}))


def batch_cases(origin: FaultOrigin, images: HTTPServer, service: RunningService) -> list[Case]:
    pictures = f"http://{ORIGIN_HOST}:{images.port}"
    return [
        # Final answers: one request, no retry.
        Case("not-found", origin.url("/status/404"), "http_404", ("404 Not Found",)),
        Case("gone", origin.url("/status/410"), "http_410", ("410 Gone",)),
        # Transient answers: retried until they succeed.
        Case(
            "error-then-ok",
            origin.url("/flaky/error-then-ok?failures=1&status=500&size=1500"),
            body=payload(1500, "error-then-ok"),
        ),
        Case(
            "unavailable-retry-after",
            origin.url("/flaky/unavailable-retry-after?failures=1&status=503&retry_after=1&size=1600"),
            body=payload(1600, "unavailable-retry-after"),
        ),
        Case(
            "rate-limited-then-ok",
            origin.url("/flaky/rate-limited-then-ok?failures=2&status=429&size=1700"),
            body=payload(1700, "rate-limited-then-ok"),
        ),
        # Transient answers that never end: fail once the tries are used up.
        Case("rate-limited", origin.url("/status/429"), "http_429", ("429 Too Many Requests", TRIES)),
        Case(
            "reset",
            origin.url("/reset?size=100000"),
            "truncated",
            ("closed before the whole body", "Connection reset by peer", TRIES),
        ),
        Case(
            "short", origin.url("/short?size=100000"), "truncated", ("50000 bytes received of 100000", TRIES)
        ),
        Case("trickle", origin.url("/trickle?size=100&interval=1"), "timeout", ("deadline", TRIES)),
        Case(
            "stalled",
            origin.url("/trickle?size=5&interval=3"),
            "timeout",
            ("sent nothing for 1.5 seconds", "(1 byte received)", TRIES),
        ),
        # Redirects.
        Case("loop", origin.url("/loop"), "too_many_redirects", ("loop",)),
        Case("chain-of-6", origin.url("/chain/6"), "too_many_redirects", ("more than 5 times",)),
        Case("chain-of-5", origin.url("/chain/5?size=3000"), body=payload(3000)),
        Case(
            "to-loopback",
            redirect(origin, f"{service.base_url}/healthz"),
            "blocked_address",
            ("127.0.0.1 is a loopback address", "FILEIMPORT_FETCH_ALLOWED_NETWORKS"),
        ),
        Case(
            "to-metadata",
            redirect(origin, "http://169.254.169.254/latest/meta-data/"),
            "blocked_address",
            ("169.254.169.254 is a link-local address",),
        ),
        # Size limits, on the bytes received (no Content-Length) and after decoding.
        Case(
            "large-declared",
            origin.url("/large?size=300000"),
            "too_large",
            (f"over the limit of {FILE_LIMIT} bytes",),
            media_type="file",
        ),
        # Undeclared: the largest type's limit (the image's) until the first 64 KiB show a file of
        # type 'file'; then its limit, not after the whole body (or at once, by Content-Length).
        Case(
            "large-undeclared",
            origin.url("/large?size=300000"),
            "too_large",
            (f"limit of {FILE_LIMIT} bytes of media type 'file'", f"more than {FILE_LIMIT} bytes received"),
        ),
        Case(
            "large-undeclared-length",
            origin.url("/ok?size=300000"),
            "too_large",
            ("of media type 'file' (application/octet-stream)", "300000 bytes by its Content-Length"),
        ),
        Case(
            "gzip-bomb",
            origin.url("/gzip-bomb?size=10000000"),
            "too_large",
            ("after decoding",),
            media_type="file",
        ),
        Case("gzipped", origin.url("/gzip?size=5000"), body=payload(5000)),
        Case(
            "unknown-encoding",
            origin.url("/bad-encoding?coding=br"),
            "decoding_error",
            ("Content-Encoding br",),
        ),
        # Content checks.
        Case(
            "html-as-jpeg",
            origin.url("/html-as-jpeg"),
            "type_mismatch",
            ("text/html", "image/jpeg", "media type 'image'"),
            media_type="image",
        ),
        Case("pixel-bomb", f"{pictures}/bomb.png", "decompression_bomb", ("400,000,000 pixels",)),
        Case("picture", f"{pictures}/picture.png", body=PICTURE, media_type="image"),
        # URLs a legacy archive has.
        Case("unicode-path", origin.url(f"/files/{UNICODE_NAME}"), body=payload(1000, seed=UNICODE_NAME)),
        Case("no-extension", origin.url("/download/8421"), body=PDF_BODY),
        Case("plain", origin.url("/ok?size=4096"), body=payload(4096)),
    ]


async def test_one_batch_against_every_fault(
    guarded_service: RunningService, fault_origin: FaultOrigin, image_origin: HTTPServer
) -> None:
    cases = batch_cases(fault_origin, image_origin, guarded_service)
    files = [
        {"url": c.url, "id": c.id, "fileName": c.id, "metadata": {}}
        | ({"mediaType": c.media_type} if c.media_type else {})
        for c in cases
    ]
    with anyio.fail_after(JOB_TIME_LIMIT):
        status = await guarded_service.import_and_wait(
            {"systemName": "faults", "files": files}, timeout=JOB_TIME_LIMIT
        )

    assert status["state"] == "success", status
    results = {r["externalId"]: r for r in status["files"]}
    assert list(results) == [c.id for c in cases]
    for case in cases:
        result = results[case.id]
        assert result["systemName"] == "faults"
        assert result["status"] == result["state"]
        if case.code is None:
            assert result["status"] == "success", result
            assert "code" not in result, result
            assert "reason" not in result, result
            entry = await guarded_service.media_entry(result["mediaId"])
            assert case.body is not None
            assert entry["asset"]["sha256"] == hashlib.sha256(case.body).hexdigest(), case.id
            assert entry["asset"]["size"] == len(case.body), case.id
            stored = await guarded_service.client.get(entry["asset"]["url"])
            assert stored.status_code == 200
            assert hashlib.sha256(stored.content).hexdigest() == entry["asset"]["sha256"]
        else:
            assert (result["status"], result["code"]) == ("failed", case.code), result
            assert "mediaId" not in result, result
            for fragment in case.reason:
                assert fragment in result["reason"], (case.id, fragment, result["reason"])
    failed = sum(1 for c in cases if c.code)
    assert status["progress"] == {
        "total": len(cases),
        "pending": 0,
        "success": len(cases) - failed,
        "skipped": 0,
        "failed": failed,
    }

    picture = await guarded_service.media_entry(results["picture"]["mediaId"])
    assert (picture["asset"]["width"], picture["asset"]["height"]) == (40, 30)
    pdf = await guarded_service.media_entry(results["no-extension"]["mediaId"])
    assert pdf["mediaType"] == "file"
    assert pdf["asset"]["mimeType"] == "application/pdf"
    assert pdf["asset"]["filename"] == "no-extension.pdf"

    # What the origin saw: final answers are asked once, transient ones until
    # they succeed or the tries run out, and the path went out percent-encoded.
    hits = fault_origin.hits
    assert hits["/status/404"] == hits["/status/410"] == 1
    assert fault_origin.flaky_counts == {
        "error-then-ok": 2,
        "unavailable-retry-after": 2,
        "rate-limited-then-ok": 3,
    }
    assert hits["/status/429"] == hits["/reset"] == hits["/short"] == 3
    assert hits["/loop"] == 1
    assert hits["/chain/0"] == 1  # only from the chain of 5
    raw_paths = {r.raw_path for r in fault_origin.requests}
    assert f"/files/{quote(UNICODE_NAME)}" in raw_paths


async def test_downloads_name_fileimport_and_respect_the_per_origin_limit(tmp_path: Path) -> None:
    limit = 2
    async with (
        serve_fault_origin("127.0.0.1") as first,
        serve_fault_origin("127.0.0.1") as second,
        run_service(tmp_path / "var", fetch_per_origin_concurrency=limit) as service,
    ):
        files = [
            {
                "url": origin.url(f"/trickle?size=4&interval=0.1&n={n}"),
                "id": f"{name}-{n}",
                "fileName": f"slow {n}",
                "metadata": {},
            }
            for name, origin in (("first", first), ("second", second))
            for n in range(6)
        ]
        files.append({"url": first.url("/echo"), "id": "echo", "fileName": "echo", "metadata": {}})
        with anyio.fail_after(JOB_TIME_LIMIT):
            status = await service.import_and_wait({"systemName": "polite", "files": files})

        assert [r["status"] for r in status["files"]] == ["success"] * len(files), status["files"]
        # Each origin was asked at most `limit` at a time, and the limit is per
        # origin: both origins were served at the same time.
        assert first.max_in_flight == limit
        assert second.max_in_flight == limit

        echo = next(r for r in status["files"] if r["externalId"] == "echo")
        entry = await service.media_entry(echo["mediaId"])
        stored = await service.client.get(entry["asset"]["url"])
        sent = {k.lower(): v for k, v in json.loads(stored.content).items()}

    product = f"fileimport/{version('fileimport')}"
    assert sent["user-agent"].startswith(product + " ")
    agents = {r.headers.get("User-Agent") for r in first.requests + second.requests}
    assert agents == {USER_AGENT}
    assert USER_AGENT.startswith(product)


async def test_files_waiting_for_a_busy_origin_do_not_hold_back_other_origins(tmp_path: Path) -> None:
    """Two download slots, one per origin: while the slow origin serves its files one by one,
    the file of another origin takes the free slot at once (before: the slow origin's files
    queued in the download slots themselves, and a fresh-user trial saw 80 small files wait
    30 s behind 20 slow ones)."""
    async with (
        serve_fault_origin("127.0.0.1") as slow,
        serve_fault_origin("127.0.0.1") as fast,
        run_service(tmp_path / "var", worker_concurrency=2, fetch_per_origin_concurrency=1) as service,
    ):
        # 8 files: one claim of this worker takes them all (4 per download slot).
        files = [
            {"url": slow.url(f"/trickle?size=5&interval=0.1&n={n}"), "id": f"slow-{n}", "fileName": "s"}
            for n in range(7)
        ]
        files.append({"url": fast.url("/ok?size=100"), "id": "fast", "fileName": "f"})
        with anyio.fail_after(JOB_TIME_LIMIT):
            status = await service.import_and_wait({"systemName": "mixed", "files": files})
        assert [r["status"] for r in status["files"]] == ["success"] * len(files), status["files"]
        created = {
            r["externalId"]: (await service.media_entry(r["mediaId"]))["createdAt"] for r in status["files"]
        }
    assert slow.max_in_flight == 1
    assert created["fast"] < created["slow-0"], created  # not after the slow origin's queue
