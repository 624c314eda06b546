"""The finished-job webhook: one signed POST whose body matches SPEC.md."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import anyio
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from tests.support.images import png_bytes
from tests.support.service import RunningService


async def test_finished_job_posts_one_signed_webhook(service: RunningService, httpserver: HTTPServer) -> None:
    received: list[Request] = []

    def receive(request: Request) -> Response:
        received.append(request)
        return Response("ok")

    httpserver.expect_request("/cat.png").respond_with_data(png_bytes(8, 8), content_type="image/png")
    httpserver.expect_request("/gone.png").respond_with_data("gone", status=410)
    httpserver.expect_request("/hooks/import", method="POST").respond_with_handler(receive)
    origin = httpserver.url_for("").rstrip("/")
    context = {"myIdentifier": "some-identifier-sent-to-the-webhook", "nested": {"n": 1}}
    status = await service.import_and_wait(
        {
            "systemName": "hooked",
            "webhook": f"{origin}/hooks/import",
            "context": context,
            "files": [
                {"url": f"{origin}/cat.png", "id": "cat", "fileName": "cat", "metadata": {}},
                {"url": f"{origin}/gone.png", "id": "gone", "fileName": "gone", "metadata": {}},
            ],
        }
    )
    with anyio.fail_after(10):
        while not received:
            await anyio.sleep(0.05)
    await anyio.sleep(0.5)  # a second POST would arrive by now
    assert len(received) == 1
    request = received[0]
    body = request.get_data()
    headers = {k.lower(): v for k, v in request.headers.items()}

    payload = Webhook(service.tenant.webhook_secret).verify(body, headers)
    assert payload == json.loads(body)
    key = base64.b64decode(service.tenant.webhook_secret.removeprefix("whsec_"))
    assert headers["x-livingdocs-signature"] == "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()

    assert payload["id"] == status["id"]
    assert payload["event"] == "import.files.finished"
    assert payload["state"] == "success"
    assert payload["finished"] is True
    assert payload["systemName"] == "hooked"
    assert payload["context"] == context
    assert payload["startedAt"]
    assert payload["finishedAt"]
    overview = payload["overview"]
    assert (overview["total"], overview["success"], overview["skipped"], overview["failed"]) == (2, 1, 0, 1)
    assert overview["details"]["failed"] == [
        {"externalId": "gone", "code": "http_410", "reason": status["files"][1]["reason"]}
    ]

    final = await service.status(status["id"])
    assert final["webhook"]["state"] == "delivered"
    assert final["webhook"]["attempts"] == 1
