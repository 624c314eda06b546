"""Webhook delivery at least once: retried on 5xx and network errors, never past a 4xx or the guard.

The retry schedule is shortened to 1 s steps (``FILEIMPORT_WEBHOOK_RETRY_SCHEDULE=1,1,1,1``);
receivers are small aiohttp apps on loopback that answer as each test needs.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from fileimport.core import address_guard
from tests.support.fault_origin import FaultOrigin, serve_fault_origin
from tests.support.service import RunningService, run_service

SCHEDULE = "1,1,1,1"
TIME_LIMIT = 30.0


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Answers ``answers[n]`` to the n-th POST (200 once they run out) and records each one."""

    answers: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = self.answers[len(self.deliveries)] if len(self.deliveries) < len(self.answers) else 200
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.deliveries.append(Delivery(headers, await request.read(), status))
        return web.Response(status=status, text=f"answer {status}\n")


@asynccontextmanager
async def serve_receiver(receiver: Receiver, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``receiver`` at ``/hook`` on an already bound socket (``listen`` happens here)."""
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a free port but not listening: connections to it are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def hook_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}/hook"


@pytest.fixture
async def origin() -> AsyncIterator[FaultOrigin]:
    async with serve_fault_origin("127.0.0.1") as running:
        yield running


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[RunningService]:
    async with run_service(tmp_path / "var", webhook_retry_schedule=SCHEDULE) as running:
        yield running


async def start_job(service: RunningService, origin: FaultOrigin, webhook: str) -> str:
    response = await service.post_import(
        {
            "systemName": "hooked",
            "webhook": webhook,
            "context": {"batch": 7},
            "files": [
                {"url": origin.url("/ok?size=1234"), "id": "ok", "fileName": "ok", "metadata": {}},
                {"url": origin.url("/status/404"), "id": "missing", "fileName": "missing", "metadata": {}},
            ],
        }
    )
    assert response.status_code == 200, response.text
    job_id: str = response.json()["id"]
    return job_id


async def wait_for_webhook(
    service: RunningService, job_id: str, *states: str, min_attempts: int = 0
) -> dict[str, Any]:
    """Poll the job status until its ``webhook`` is in one of ``states``; returns the whole status."""
    with anyio.fail_after(TIME_LIMIT):
        while True:
            status = await service.status(job_id)
            webhook = status.get("webhook") or {}
            if webhook.get("state") in states and webhook.get("attempts", 0) >= min_attempts:
                return status
            await anyio.sleep(0.05)


def assert_finished_payload(body: bytes, job_id: str) -> None:
    message = json.loads(body)
    assert message["id"] == job_id
    assert message["event"] == "import.files.finished"
    assert (message["state"], message["finished"], message["systemName"]) == ("success", True, "hooked")
    assert message["context"] == {"batch": 7}
    overview = message["overview"]
    assert (overview["total"], overview["success"], overview["skipped"], overview["failed"]) == (2, 1, 0, 1)
    assert [f["externalId"] for f in overview["details"]["failed"]] == ["missing"]
    assert overview["details"]["failed"][0]["code"] == "http_404"


async def test_receiver_failing_three_times_gets_the_fourth_attempt(
    service: RunningService, origin: FaultOrigin
) -> None:
    receiver = Receiver(answers=[503, 503, 503])
    sock = bound_socket()
    async with serve_receiver(receiver, sock):
        job_id = await start_job(service, origin, hook_url(sock))
        status = await wait_for_webhook(service, job_id, "delivered", "failed")

    assert status["webhook"]["state"] == "delivered", status["webhook"]
    assert status["webhook"]["attempts"] == 4
    assert "lastError" not in status["webhook"]
    assert [d.status for d in receiver.deliveries] == [503, 503, 503, 200]
    # One message, retried: the same id and body every time, signed afresh.
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
    assert len({d.body for d in receiver.deliveries}) == 1
    delivered = receiver.deliveries[-1]
    verified = Webhook(service.tenant.webhook_secret).verify(delivered.body, delivered.headers)
    assert verified == json.loads(delivered.body)
    assert delivered.headers["content-type"] == "application/json"
    assert_finished_payload(delivered.body, job_id)
    for earlier in receiver.deliveries[:-1]:
        Webhook(service.tenant.webhook_secret).verify(earlier.body, earlier.headers)


async def test_receiver_answering_400_is_tried_once(service: RunningService, origin: FaultOrigin) -> None:
    receiver = Receiver(answers=[400])
    sock = bound_socket()
    async with serve_receiver(receiver, sock):
        job_id = await start_job(service, origin, hook_url(sock))
        status = await wait_for_webhook(service, job_id, "delivered", "failed")
        webhook = status["webhook"]
        assert (webhook["state"], webhook["attempts"]) == ("failed", 1), webhook
        assert "400" in webhook["lastError"]
        assert webhook["lastStatus"] == 400
        # Failed is final: nothing is due any more, even a whole retry step later.
        await anyio.sleep(1.5)
    assert len(receiver.deliveries) == 1
    assert (await service.status(job_id))["webhook"] == webhook


async def test_receiver_that_is_down_at_first_gets_the_webhook_once_up(
    service: RunningService, origin: FaultOrigin
) -> None:
    receiver = Receiver()
    sock = bound_socket()  # bound but not listening: connection refused
    try:
        job_id = await start_job(service, origin, hook_url(sock))
        down = await wait_for_webhook(service, job_id, "pending", min_attempts=2)
        assert "Connection refused" in down["webhook"]["lastError"], down["webhook"]
        assert "lastStatus" not in down["webhook"]
        async with serve_receiver(receiver, sock):
            status = await wait_for_webhook(service, job_id, "delivered", "failed")
    finally:
        sock.close()

    webhook = status["webhook"]
    assert webhook["state"] == "delivered", webhook
    assert webhook["attempts"] >= 3
    assert len(receiver.deliveries) == 1
    delivered = receiver.deliveries[0]
    Webhook(service.tenant.webhook_secret).verify(delivered.body, delivered.headers)
    assert_finished_payload(delivered.body, job_id)


async def test_webhook_to_a_host_that_resolves_to_a_blocked_address_fails_without_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A literal blocked address is refused at POST (test_bad_requests); a name is checked when
    the delivery resolves it."""
    connections = 0

    async def to_loopback(host: str, port: int) -> list[str]:
        assert host == "hooks.example.test"
        return ["127.0.0.1"]

    monkeypatch.setattr(address_guard, "system_resolver", to_loopback)

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with (
            serve_fault_origin("127.0.0.2") as files_origin,
            run_service(
                tmp_path / "var", webhook_retry_schedule=SCHEDULE, fetch_allowed_networks="127.0.0.2/32"
            ) as service,
        ):
            job_id = await start_job(service, files_origin, f"http://hooks.example.test:{port}/hook")
            status = await wait_for_webhook(service, job_id, "delivered", "failed")
    finally:
        listener.close()
        await listener.wait_closed()

    assert [f["status"] for f in status["files"]] == ["success", "failed"]
    webhook = status["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("failed", 1), webhook
    assert "hooks.example.test resolves to 127.0.0.1, a loopback address" in webhook["lastError"]
    assert connections == 0


async def test_webhook_host_that_does_not_resolve_is_retried(
    tmp_path: Path, origin: FaultOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # DNS is replaced, so no query leaves the machine.
    monkeypatch.setattr(address_guard, "system_resolver", no_such_host)
    async with run_service(tmp_path / "var", webhook_retry_schedule=SCHEDULE) as service:
        job_id = await start_job(service, origin, "http://hooks.example.invalid/hook")
        status = await wait_for_webhook(service, job_id, "pending", "failed", min_attempts=2)

    webhook = status["webhook"]
    assert webhook["state"] == "pending", webhook  # a network error: tried again on the schedule
    assert "hooks.example.invalid does not resolve" in webhook["lastError"]


async def test_webhook_url_with_an_impossible_port_is_refused_when_posted(
    service: RunningService, origin: FaultOrigin
) -> None:
    response = await service.post_import(
        {
            "systemName": "hooked",
            "webhook": "http://127.0.0.1:99999/hook",
            "files": [{"url": origin.url("/ok?size=10"), "id": "ok", "fileName": "ok", "metadata": {}}],
        }
    )
    assert response.status_code == 400
    assert response.json()["error_details"] == {"webhook": "must have a port from 1 to 65535"}
