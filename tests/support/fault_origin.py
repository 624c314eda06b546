"""A misbehaving HTTP origin on loopback, for fetcher and end-to-end tests.

``start_fault_origin()`` serves an aiohttp app on ``127.0.0.1`` (or another
loopback address) on a free port and returns a ``FaultOrigin`` with its
``base_url``; ``serve_fault_origin()`` is the same as an async context
manager. Run ``python -m tests.support.fault_origin --port 8765`` to serve it
from another process (it prints the base URL).

Bodies are deterministic: ``payload(size, seed)`` gives the bytes a route
serves, so a test can compare SHA-256 digests. Routes (all GET):

- ``/ok?size=N&type=T`` — N bytes (default 1000) with Content-Length,
  ETag and Last-Modified.
- ``/status/{code}`` — that status with a short text body (404, 410, 500...).
- ``/flaky/{key}?failures=N&status=S&retry_after=V&size=M`` — the first N
  requests for ``key`` answer S (default 500, with ``Retry-After: V`` when
  given), later ones 200 with M bytes; counted per key.
- ``/reset?size=N`` — announces N bytes, sends half, then resets the
  connection (TCP RST).
- ``/short?size=N`` — announces N bytes, sends half, then closes cleanly.
- ``/trickle?size=N&interval=S`` — N bytes, one every S seconds.
- ``/loop`` — redirects to itself; ``/loop/a`` and ``/loop/b`` to each other.
- ``/chain/{n}`` — n redirects in a row, then ``/ok``.
- ``/redirect?to=URL&status=302&cookie=C`` — one redirect to URL (may be
  relative), setting cookie ``session=C`` when given.
- ``/large?size=N`` — N bytes, chunked, without Content-Length.
- ``/gzip-members?size=N&parts=K&piece=P`` — N bytes in K gzip members, sent P bytes at a time.
- ``/gzip-cut?size=N``, ``/gzip-junk?size=N`` — a gzip stream cut short, or followed by junk.
- ``/gzip?size=N`` — ``payload(N)`` gzip-encoded (Content-Encoding: gzip).
- ``/gzip-bomb?size=N`` — N zero bytes, gzip-encoded (a few KiB on the wire).
- ``/zeros?size=N&codings=C`` — N zero bytes with the content codings C
  (``gzip`` layers, comma-separated) applied in order; compressed piece by
  piece, so a large N costs the origin no N-byte buffer.
- ``/encoded?size=N&codings=C`` — ``payload(N)`` with the comma-separated
  content codings C applied in order: ``gzip``, ``deflate`` (zlib format) or
  ``raw-deflate`` (a bare RFC 1951 stream, labelled ``deflate``).
- ``/bad-encoding?coding=C`` — garbage labelled ``Content-Encoding: C``.
- ``/html-as-jpeg`` — an HTML error page labelled ``Content-Type: image/jpeg``.
- ``/files/{name}`` — ``payload(1000, seed=name)``; any name, spaces and
  non-ASCII included (``FaultOrigin.requests`` shows the raw path).
- ``/download/{id}`` — a small PDF without a file extension in the URL.
- ``/conditional?etag=E`` — 304 when If-None-Match matches E (default
  ``"v1"``) or If-Modified-Since is not before its Last-Modified, else 200.
- ``/echo`` — the request headers as JSON.
- ``/_hits`` — requests seen so far per path, as JSON.

``FaultOrigin.max_in_flight`` is the most requests it served at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import socket
import ssl
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from aiohttp import web
from aiohttp.typedefs import Handler

LAST_MODIFIED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Error</title></head>"
    b"<body><h1>Something went wrong</h1></body></html>\n"
)
PDF_BODY = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def payload(size: int, seed: str = "") -> bytes:
    """``size`` deterministic, incompressible-looking bytes derived from ``seed``."""
    return b"".join(iter_payload(size, seed))


def iter_payload(size: int, seed: str = "", chunk_bytes: int = 64 * 1024) -> Iterator[bytes]:
    """``payload(size, seed)`` in pieces of ``chunk_bytes``, without holding it all."""
    blocks_per_chunk = max(chunk_bytes // 32, 1)
    counter = 0
    remaining = size
    while remaining > 0:
        piece = b"".join(
            hashlib.sha256(f"{seed}:{counter + i}".encode()).digest() for i in range(blocks_per_chunk)
        )[:remaining]
        counter += blocks_per_chunk
        remaining -= len(piece)
        yield piece


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the origin saw it: ``raw_path`` is percent-encoded, as sent."""

    method: str
    raw_path: str
    path: str
    headers: dict[str, str]
    local_address: str


@dataclass
class FaultOrigin:
    """A running fault origin; ``hits`` counts requests per decoded path."""

    base_url: str
    host: str
    port: int
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    flaky_counts: Counter[str] = field(default_factory=Counter)
    runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        """``base_url`` joined with ``path`` (which starts with ``/``)."""
        return f"{self.base_url}{path}"

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _size(request: web.Request, default: int = 1000) -> int:
    return int(request.query.get("size", default))


def _file_response(body: bytes, content_type: str = "application/octet-stream") -> web.Response:
    return web.Response(
        body=body,
        headers={
            "Content-Type": content_type,
            "ETag": f'"{hashlib.sha256(body).hexdigest()[:16]}"',
            "Last-Modified": format_datetime(LAST_MODIFIED, usegmt=True),
        },
    )


async def _start_partial(request: web.Request, announced: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = announced
    await response.prepare(request)
    return response


def _build_app(origin: FaultOrigin) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin.hits[request.path] += 1
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        origin.requests.append(
            RecordedRequest(
                method=request.method,
                raw_path=request.raw_path,
                path=request.path,
                headers=dict(request.headers),
                local_address=str(sockname[0]) if sockname else "",
            )
        )
        origin.in_flight += 1
        origin.max_in_flight = max(origin.max_in_flight, origin.in_flight)
        try:
            return await handler(request)
        finally:
            origin.in_flight -= 1

    @routes.get("/ok")
    async def ok(request: web.Request) -> web.StreamResponse:
        content_type = request.query.get("type", "application/octet-stream")
        return _file_response(payload(_size(request)), content_type)

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}\n")

    @routes.get("/flaky/{key}")
    async def flaky(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        origin.flaky_counts[key] += 1
        if origin.flaky_counts[key] <= int(request.query.get("failures", 1)):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            code = int(request.query.get("status", 500))
            return web.Response(status=code, text=f"failure {origin.flaky_counts[key]}\n", headers=headers)
        return _file_response(payload(_size(request), seed=key))

    @routes.get("/reset")
    async def reset(request: web.Request) -> web.StreamResponse:
        size = _size(request, 100_000)
        response = await _start_partial(request, size)
        await response.write(payload(size)[: size // 2])
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        raise asyncio.CancelledError  # nothing more can be sent on this connection

    @routes.get("/short")
    async def short(request: web.Request) -> web.StreamResponse:
        size = _size(request, 100_000)
        response = await _start_partial(request, size)
        await response.write(payload(size)[: size // 2])
        transport = request.transport
        assert transport is not None
        transport.close()  # flushes what was written, then FIN
        raise asyncio.CancelledError

    @routes.get("/trickle")
    async def trickle(request: web.Request) -> web.StreamResponse:
        size = _size(request, 10)
        interval = float(request.query.get("interval", 1.0))
        response = await _start_partial(request, size)
        for byte in payload(size):
            await response.write(bytes([byte]))
            await asyncio.sleep(interval)
        await response.write_eof()
        return response

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    @routes.get("/loop/{side}")
    async def loop_pair(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop/b" if request.match_info["side"] == "a" else "/loop/a")

    @routes.get("/chain/{n}")
    async def chain(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if n <= 0:
            return _file_response(payload(_size(request)))
        suffix = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"/chain/{n - 1}{suffix}")

    @routes.get("/redirect")
    async def redirect(request: web.Request) -> web.StreamResponse:
        code = int(request.query.get("status", 302))
        response = web.Response(status=code, headers={"Location": request.query["to"]})
        if "cookie" in request.query:
            response.set_cookie("session", request.query["cookie"])
        return response

    @routes.get("/large")
    async def large(request: web.Request) -> web.StreamResponse:
        size = _size(request, 1_000_000)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in iter_payload(size):
            await response.write(piece)
        await response.write_eof()
        return response

    @routes.get("/gzip")
    async def gzipped(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(payload(_size(request)))
        return web.Response(
            body=body,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
        )

    @routes.get("/gzip-members")
    async def gzip_members(request: web.Request) -> web.StreamResponse:
        # payload(size) in `parts` gzip members one after the other (RFC 1952 §2.2),
        # sent in pieces of `piece` bytes, so a member's header can arrive split.
        body = payload(_size(request))
        parts = int(request.query.get("parts", "2"))
        step = -(-len(body) // parts)
        encoded = b"".join(gzip.compress(body[i : i + step]) for i in range(0, len(body), step))
        response = web.StreamResponse(
            headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
        )
        response.content_length = len(encoded)
        await response.prepare(request)
        piece = int(request.query.get("piece", str(len(encoded))))
        for i in range(0, len(encoded), piece):
            await response.write(encoded[i : i + piece])
        return response

    @routes.get("/gzip-cut")
    async def gzip_cut(request: web.Request) -> web.StreamResponse:
        # A gzip stream without its last 100 bytes, framed as complete (Content-Length).
        body = gzip.compress(payload(_size(request)))[:-100]
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
        )

    @routes.get("/gzip-junk")
    async def gzip_junk(request: web.Request) -> web.StreamResponse:
        # A whole gzip stream followed by bytes that start no member.
        body = gzip.compress(payload(_size(request))) + b"<html>trailing junk</html>"
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
        )

    @routes.get("/gzip-bomb")
    async def gzip_bomb(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(bytes(_size(request, 10_000_000)), compresslevel=9)
        return web.Response(
            body=body,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
        )

    @routes.get("/zeros")
    async def zeros(request: web.Request) -> web.StreamResponse:
        body = b""
        step = bytes(2**20)
        codings = request.query.get("codings", "gzip").split(",")
        if set(codings) != {"gzip"}:
            raise web.HTTPBadRequest(text="codings: gzip layers only")
        for n in range(len(codings)):
            packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            if n == 0:
                left = _size(request)
                parts = []
                while left:
                    parts.append(packer.compress(step[: min(left, len(step))]))
                    left -= min(left, len(step))
                body = b"".join(parts) + packer.flush()
            else:
                body = packer.compress(body) + packer.flush()
        return web.Response(
            body=body,
            headers={"Content-Encoding": ", ".join(codings), "Content-Type": "application/octet-stream"},
        )

    @routes.get("/encoded")
    async def encoded(request: web.Request) -> web.StreamResponse:
        body = payload(_size(request))
        labels = []
        for coding in request.query.get("codings", "gzip").split(","):
            if coding == "gzip":
                body = gzip.compress(body)
            elif coding == "deflate":
                body = zlib.compress(body)
            else:
                compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                body = compressor.compress(body) + compressor.flush()
            labels.append("deflate" if coding == "raw-deflate" else coding)
        return web.Response(
            body=body,
            headers={"Content-Encoding": ", ".join(labels), "Content-Type": "application/octet-stream"},
        )

    @routes.get("/bad-encoding")
    async def bad_encoding(request: web.Request) -> web.StreamResponse:
        coding = request.query.get("coding", "gzip")
        return web.Response(
            body=b"this is not " + coding.encode() + b" data" * 10,
            headers={"Content-Encoding": coding, "Content-Type": "application/octet-stream"},
        )

    @routes.get("/html-as-jpeg")
    async def html_as_jpeg(request: web.Request) -> web.StreamResponse:
        return web.Response(body=HTML_ERROR_PAGE, headers={"Content-Type": "image/jpeg"})

    @routes.get("/files/{name:.*}")
    async def files(request: web.Request) -> web.StreamResponse:
        return _file_response(payload(1000, seed=request.match_info["name"]))

    @routes.get("/download/{id}")
    async def download(request: web.Request) -> web.StreamResponse:
        return _file_response(PDF_BODY, "application/pdf")

    @routes.get("/conditional")
    async def conditional(request: web.Request) -> web.StreamResponse:
        etag = request.query.get("etag", '"v1"')
        headers = {
            "ETag": etag,
            "Last-Modified": format_datetime(LAST_MODIFIED, usegmt=True),
        }
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [tag.strip() for tag in if_none_match.split(",")]
            if etag in tags or "*" in tags:
                return web.Response(status=304, headers=headers)
        elif "If-Modified-Since" in request.headers:
            with contextlib.suppress(TypeError, ValueError):
                since = parsedate_to_datetime(request.headers["If-Modified-Since"])
                if since >= LAST_MODIFIED:
                    return web.Response(status=304, headers=headers)
        body = payload(2000, seed=etag)
        return web.Response(body=body, headers={**headers, "Content-Type": "image/png"})

    @routes.get("/echo")
    async def echo(request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(request.headers))

    @routes.get("/_hits")
    async def hits(request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(origin.hits))

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    return app


async def start_fault_origin(
    host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
) -> FaultOrigin:
    """Serve the fault app on ``host:port`` (0: a free port); returns the running origin.

    Call ``aclose()`` when done. With ``ssl_context`` it serves https.
    """
    origin = FaultOrigin(base_url="", host=host, port=port)
    runner = web.AppRunner(
        _build_app(origin), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound_port = int(runner.addresses[0][1])
    scheme = "https" if ssl_context else "http"
    url_host = f"[{host}]" if ":" in host else host
    origin.port = bound_port
    origin.base_url = f"{scheme}://{url_host}:{bound_port}"
    origin.runner = runner
    return origin


@contextlib.asynccontextmanager
async def serve_fault_origin(
    host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FaultOrigin]:
    """``start_fault_origin`` as an async context manager."""
    origin = await start_fault_origin(host, port, ssl_context=ssl_context)
    try:
        yield origin
    finally:
        await origin.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def run() -> None:
        origin = await start_fault_origin(args.host, args.port)
        print(origin.base_url, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await origin.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
