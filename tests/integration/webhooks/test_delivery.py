"""One webhook delivery attempt against real sockets on loopback and a stub resolver.

``attempt_delivery`` must answer every receiver fault with a result (never an
exception, which would stop the delivery loop), telling retryable faults from
final ones, with an error a person can act on.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import httpx2
import pytest

from fileimport.core.address_guard import AddressGuard, create_guarded_transport
from fileimport.webhooks.models import WebhookDelivery
from fileimport.webhooks.service import AttemptResult, attempt_delivery

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def no_dns(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    guard = AddressGuard([ipaddress.ip_network("127.0.0.2/32")], resolver=no_dns)
    async with httpx2.AsyncClient(transport=create_guarded_transport(guard), timeout=5) as running:
        yield running


async def attempt(client: httpx2.AsyncClient, url: str) -> AttemptResult:
    delivery = WebhookDelivery(id="msg_test", url=url, payload='{"id":"j1"}', attempts=0)
    return await attempt_delivery(client, delivery, SECRET)


async def test_refused_connection_is_retried_and_named(client: httpx2.AsyncClient) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.2", 0))
        port = closed.getsockname()[1]
        result = await attempt(client, f"http://127.0.0.2:{port}/hook")
    assert (result.delivered, result.retryable, result.status) == (False, True, None)
    assert result.error == "ConnectError: Connection refused"


async def test_host_that_does_not_resolve_is_retried(client: httpx2.AsyncClient) -> None:
    result = await attempt(client, "http://hooks.example.invalid/hook")
    assert (result.delivered, result.retryable) == (False, True)
    assert result.error == "hooks.example.invalid does not resolve to any address"


async def test_blocked_address_is_final(client: httpx2.AsyncClient) -> None:
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
    client: httpx2.AsyncClient, url: str, problem: str
) -> None:
    # Deliveries stored before the request validation refused such URLs.
    result = await attempt(client, url)
    assert (result.delivered, result.retryable) == (False, False)
    assert result.error is not None
    assert problem in result.error
