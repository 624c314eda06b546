"""Bad requests get the right 4xx in the reference's error shape, and queue nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest

from fileimport.auth.service import SCOPE_READ
from tests.support.service import RunningService, create_tenant

GOOD_FILE = {
    "url": "http://127.0.0.1:9/cat.jpg",
    "id": "cat-1",
    "fileName": "cat",
    "metadata": {"caption": "foo"},
}


def body(**changes: Any) -> dict[str, Any]:
    return {"systemName": "legacy", "files": [dict(GOOD_FILE)], **changes}


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    assert payload["status"] == status
    assert isinstance(payload["error"], str)
    assert payload["error"]
    assert isinstance(payload["error_details"], dict)
    return payload["error_details"]


@pytest.mark.parametrize(
    ("request_body", "paths"),
    [
        ({"systemName": "legacy"}, {"files"}),
        (body(files=[]), {"files"}),
        (body(files=[GOOD_FILE, dict(GOOD_FILE, url="http://127.0.0.1:9/2.jpg")]), {"files.1.id"}),
        (body(context={"blob": "x" * 8200}), {"context"}),
        (body(files=[dict(GOOD_FILE, url="ftp://example.org/cat.jpg")]), {"files.0.url"}),
        (body(files=[dict(GOOD_FILE, url="/relative/cat.jpg")]), {"files.0.url"}),
        (body(files=[dict(GOOD_FILE, url="https://example.org/" + "a" * 2100)]), {"files.0.url"}),
        (body(files=[dict(GOOD_FILE, metadata={"caption": 5})]), {"files.0.metadata.caption"}),
        (body(files=[dict(GOOD_FILE, metadata={"nope": "x"})]), {"files.0.metadata.nope"}),
        (body(files=[dict(GOOD_FILE, mediaType="sculpture")]), {"files.0.mediaType"}),
        (body(webhook="not a url"), {"webhook"}),
        (body(files=[dict(GOOD_FILE, url="http://0177.0.0.1/cat.jpg")]), {"files.0.url"}),
        (body(files=[GOOD_FILE, dict(GOOD_FILE, id="2", url="http://0x7f.1/2.jpg")]), {"files.1.url"}),
        (body(files=[GOOD_FILE, dict(GOOD_FILE, id="2", url="http://2130706433/2.jpg")]), {"files.1.url"}),
        (body(files=[GOOD_FILE, dict(GOOD_FILE, id="2", url="http://127.1:8080/2.jpg")]), {"files.1.url"}),
        (body(webhook="http://0x7f.0.0.1/hook"), {"webhook"}),
        (body(files=[dict(GOOD_FILE, url="http://①②⑦.0.0.1/cat.jpg")]), {"files.0.url"}),
        (body(files=[dict(GOOD_FILE, url="http://[::1%25lo]:9/cat.jpg")]), {"files.0.url"}),
        (body(systemName=""), {"systemName"}),
        # Misspelt keys: a 400 naming each, not a job without a webhook or a file without metadata.
        (body(webHook="http://127.0.0.1:9/hook"), {"webHook"}),
        (
            body(files=[{**GOOD_FILE, "metaData": {"caption": "x"}, "mediatype": "image"}]),
            {"files.0.metaData", "files.0.mediatype"},
        ),
        (
            body(files=[dict(GOOD_FILE, url="bad"), dict(GOOD_FILE, id="b", metadata={"title": ["x"]})]),
            {"files.0.url", "files.1.metadata.title"},
        ),
    ],
)
async def test_invalid_batches_name_every_problem(
    service: RunningService, request_body: dict[str, Any], paths: set[str]
) -> None:
    details = assert_error_shape(await service.post_import(request_body), 400)
    assert set(details) == paths


@pytest.mark.parametrize(
    ("webhook", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data", "a link-local"),
        ("http://10.0.0.5:8080/hook", "a private"),
        ("https://[fd00::1]/hook", "a unique-local"),
        ("http://[::ffff:192.168.1.1]/hook", "a private"),
    ],
)
async def test_a_webhook_to_an_address_the_guard_refuses_is_a_400_naming_it(
    service: RunningService, webhook: str, kind: str
) -> None:
    """It could never be delivered; a host name is only resolved and checked at delivery."""
    details = assert_error_shape(await service.post_import(body(webhook=webhook)), 400)
    assert set(details) == {"webhook"}
    assert f"is {kind} address" in details["webhook"]
    assert "FILEIMPORT_FETCH_ALLOWED_NETWORKS" in details["webhook"]
    # On a network the operator allowed (the tests' loopback), the same POST is taken.
    assert (await service.post_import(body(webhook="http://127.0.0.1:9/hook"))).status_code == 200


async def test_too_many_files_is_rejected(service: RunningService) -> None:
    files = [dict(GOOD_FILE, id=str(i)) for i in range(service.settings.max_batch_files + 1)]
    details = assert_error_shape(await service.post_import(body(files=files)), 400)
    assert "files" in details


async def test_not_json(service: RunningService) -> None:
    headers = dict(service.tenant.headers)
    response = await service.client.post(
        "/api/v1/import/files", content=b"files=1", headers={**headers, "Content-Type": "text/plain"}
    )
    assert_error_shape(response, 415)
    response = await service.client.post(
        "/api/v1/import/files", content=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert "body" in assert_error_shape(response, 400)


async def test_a_compressed_body_is_a_415_saying_to_send_it_uncompressed(service: RunningService) -> None:
    """RFC 7694: the server names the codings it accepts; a gzip body is not mistaken for bad UTF-8."""
    headers = {**service.tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await service.client.post(
        "/api/v1/import/files", content=gzip.compress(json.dumps(body()).encode()), headers=headers
    )
    details = assert_error_shape(response, 415)
    assert details == {"Content-Encoding": "gzip is not accepted; send the JSON uncompressed"}
    assert response.headers["accept-encoding"] == "identity"
    headers["Content-Encoding"] = "identity"
    response = await service.client.post("/api/v1/import/files", content=json.dumps(body()), headers=headers)
    assert response.status_code == 200, response.text


async def test_auth_errors(service: RunningService) -> None:
    assert_error_shape(await service.client.post("/api/v1/import/files", json=body()), 401)
    bad = {"Authorization": "Bearer fi_not-a-token"}
    assert_error_shape(await service.client.post("/api/v1/import/files", json=body(), headers=bad), 401)
    reader = await create_tenant(service.settings.resolved_database_url, "reader", scopes=(SCOPE_READ,))
    assert_error_shape(
        await service.client.post("/api/v1/import/files", json=body(), headers=reader.headers), 403
    )


async def test_other_projects_jobs_are_not_found(service: RunningService) -> None:
    response = await service.post_import(body())
    job_id = response.json()["id"]
    other = await create_tenant(service.settings.resolved_database_url, "other")
    response = await service.client.get(
        "/api/v1/import/files/status", params={"id": job_id}, headers=other.headers
    )
    assert_error_shape(response, 404)
    response = await service.client.get(
        "/api/v1/import/files/status", params={"id": "nope"}, headers=service.tenant.headers
    )
    assert_error_shape(response, 404)


async def test_idempotency_key_returns_the_first_job(service: RunningService) -> None:
    headers = {"Idempotency-Key": "batch-0001"}
    first = await service.post_import(body(), headers=headers)
    again = await service.post_import(body(), headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    different = await service.post_import(body(systemName="other"), headers=headers)
    assert_error_shape(different, 422)


async def test_whitespace_around_an_idempotency_key_is_not_part_of_it(service: RunningService) -> None:
    # RFC 9110 §5.5; a proxy that trims header values must not turn a retry into
    # a second job. httpx refuses to send such a value, so this one goes raw.
    payload = json.dumps(body()).encode()

    async def raw_post(key: bytes) -> tuple[int, dict[str, Any]]:
        host, port = service.base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        head = [b"POST /api/v1/import/files HTTP/1.1", f"Host: {host}".encode()]
        head += [f"{k}: {v}".encode() for k, v in service.tenant.headers.items()]
        head += [b"Content-Type: application/json", f"Content-Length: {len(payload)}".encode()]
        head += [b"Idempotency-Key: " + key, b"Connection: close"]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        response = await reader.read()
        writer.close()
        status_line, _, rest = response.partition(b"\r\n")
        return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])

    status, first = await raw_post(b"batch-0002")
    assert status == 200, first
    status, again = await raw_post(b"batch-0002 \t")
    assert status == 200, again
    assert again["id"] == first["id"]
    status, blank = await raw_post(b"   ")
    assert status == 400, blank
    assert "Idempotency-Key" in str(blank)
