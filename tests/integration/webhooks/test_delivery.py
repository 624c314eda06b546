"""One webhook delivery attempt against real sockets on loopback and a stub resolver.

``attempt_delivery`` must answer every receiver fault with a result (never an
exception, which would stop the delivery loop), telling retryable faults from
final ones, with an error a person can act on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from fileimport.core.address_guard import AddressGuard, create_guarded_session
from fileimport.webhooks.models import WebhookDelivery
from fileimport.webhooks.service import AttemptResult, attempt_delivery

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def no_dns(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    guard = AddressGuard([ipaddress.ip_network("127.0.0.2/32")], resolver=no_dns)
    async with create_guarded_session(guard, timeout_seconds=5) as running:
        yield running


async def attempt(client: aiohttp.ClientSession, url: str) -> AttemptResult:
    delivery = WebhookDelivery(id="msg_test", url=url, payload='{"id":"j1"}', attempts=0)
    return await attempt_delivery(client, delivery, SECRET)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_receiver(handle: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.2 answering with ``handle``; yields its hook URL."""
    server = await asyncio.start_server(handle, "127.0.0.2", 0)
    try:
        yield f"http://127.0.0.2:{server.sockets[0].getsockname()[1]}/hook"
    finally:
        server.close()
        await server.wait_closed()


async def test_receiver_that_does_not_answer_in_time_is_retried() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(5)
        writer.close()

    guard = AddressGuard([ipaddress.ip_network("127.0.0.2/32")])
    async with raw_receiver(silent) as url, create_guarded_session(guard, timeout_seconds=0.3) as quick:
        result = await attempt(quick, url)
    assert (result.delivered, result.retryable, result.status, result.error) == (
        False,
        True,
        None,
        "timed out",
    )


async def test_redirect_is_not_followed(client: aiohttp.ClientSession) -> None:
    requests: list[bytes] = []

    async def redirecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_receiver(redirecting) as url:
        result = await attempt(client, url)
    assert (result.delivered, result.retryable, result.status) == (False, False, 307)
    assert result.error == "receiver answered 307"
    assert len(requests) == 1
    assert requests[0].startswith(b"POST /hook HTTP/1.1")


async def test_refused_connection_is_retried_and_named(client: aiohttp.ClientSession) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.2", 0))
        port = closed.getsockname()[1]
        result = await attempt(client, f"http://127.0.0.2:{port}/hook")
    assert (result.delivered, result.retryable, result.status) == (False, True, None)
    assert result.error == "connection failed: Connection refused"


async def test_host_that_does_not_resolve_is_retried(client: aiohttp.ClientSession) -> None:
    result = await attempt(client, "http://hooks.example.invalid/hook")
    assert (result.delivered, result.retryable) == (False, True)
    assert result.error == "hooks.example.invalid does not resolve to any address"


async def test_blocked_address_is_final(client: aiohttp.ClientSession) -> None:
    result = await attempt(client, "http://169.254.169.254/hook")
    assert (result.delivered, result.retryable) == (False, False)
    assert result.error is not None
    assert "169.254.169.254 is a link-local address" in result.error


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.2:99999/hook", "its port is out of range"),
        ("http://exa mple.com/hook", "its host is not a valid name or address"),
    ],
)
async def test_url_no_connection_can_be_made_to_is_final(
    client: aiohttp.ClientSession, url: str, problem: str
) -> None:
    # Deliveries stored before the request validation refused such URLs.
    result = await attempt(client, url)
    assert (result.delivered, result.retryable) == (False, False)
    assert result.error is not None
    assert problem in result.error
