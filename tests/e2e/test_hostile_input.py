"""Hostile and odd input gets a 4xx in the reference's error shape naming the field, never a 5xx.

The worker is off: nothing a request names is ever fetched. Tests marked
`ON_BOTH_DATABASES` also run on PostgreSQL, which refuses text SQLite takes
(U+0000, unpaired surrogates).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATABASE_BACKENDS
from tests.support.service import RunningService, run_service

ON_BOTH_DATABASES = pytest.mark.parametrize("database_backend", DATABASE_BACKENDS, indirect=True)

GOOD_FILE = {
    "url": "https://example.org/cat.jpg",
    "id": "cat-1",
    "fileName": "cat",
    "metadata": {"caption": "foo"},
}
IMPORT = "/api/v1/import/files"
STATUS = "/api/v1/import/files/status"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def service(tmp_path: Path, service_database_url: str | None) -> AsyncIterator[RunningService]:
    async with run_service(tmp_path / "var", database_url=service_database_url, run_worker=False) as running:
        yield running


def body(**changes: Any) -> dict[str, Any]:
    return {"systemName": "legacy", "files": [dict(GOOD_FILE)], **changes}


def error_details(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    assert set(payload) == {"status", "error", "error_details"}
    assert payload["status"] == status
    assert isinstance(payload["error"], str)
    assert payload["error"]
    details: dict[str, Any] = payload["error_details"]
    assert isinstance(details, dict)
    assert details
    return details


async def post_raw(service: RunningService, content: bytes, headers: dict[str, str] | None = None) -> Any:
    return await service.client.post(
        IMPORT, content=content, headers={**service.tenant.headers, **JSON, **(headers or {})}
    )


async def test_a_body_over_the_limit_is_413(service: RunningService) -> None:
    limit = int(service.settings.max_body_bytes)
    oversized = json.dumps(body(context={"pad": "x" * (20 * 1024 * 1024)})).encode()
    assert len(oversized) > limit
    details = error_details(await post_raw(service, oversized), 413)
    assert "body" in details


async def test_a_streamed_body_over_the_limit_is_413(service: RunningService) -> None:
    """Without Content-Length (chunked), the limit holds on the bytes received."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * (1024 * 1024)

    response = await service.client.post(IMPORT, content=chunks(), headers={**service.tenant.headers, **JSON})
    assert "body" in error_details(response, 413)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ],
)
async def test_only_utf8_json_is_accepted(service: RunningService, content_type: str) -> None:
    content = json.dumps(body()).encode("latin-1")
    details = error_details(await post_raw(service, content, {"Content-Type": content_type}), 415)
    assert "Content-Type" in details


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", 'application/json; charset="UTF-8"', "Application/JSON"],
)
async def test_utf8_json_content_types_are_accepted(service: RunningService, content_type: str) -> None:
    response = await post_raw(service, json.dumps(body()).encode(), {"Content-Type": content_type})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("content", "path"),
    [
        (b"[]", "body"),
        (b'[{"systemName": "legacy"}]', "body"),
        (b'"files"', "body"),
        (b"null", "body"),
        (b"", "body"),
        (b"{not json", "body"),
        ('{"systemName": "caf\u00e9"}'.encode("latin-1"), "body"),
        ('{"systemName": "legacy"}'.encode("utf-16"), "body"),
        (b"\xef\xbb\xbf{}", "body"),
        (b'{"systemName": "legacy", "files": [], "context": {"n": NaN}}', "body"),
        (b'{"systemName": "legacy", "files": [], "context": {"n": Infinity}}', "body"),
        (b'{"systemName": "legacy", "files": [], "context": {"n": 1e999}}', "body"),
        (b'{"systemName": "legacy", "files": [], "context": {"n": ' + b"9" * 5000 + b"}}", "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (b'{"systemName": "a", "systemName": "b", "files": []}', "body"),
        (b'{"systemName": "a", "files": [{"id": "1", "id": "2"}]}', "body"),
        (
            b'{"systemName": "a", "files": [], "context": {"n": ' + b"[" * 900 + b"]" * 900 + b"}}",
            "context.n",
        ),
    ],
)
async def test_bodies_that_are_not_an_import_request(
    service: RunningService, content: bytes, path: str
) -> None:
    details = error_details(await post_raw(service, content), 400)
    assert any(p == path or p.startswith(f"{path}.") for p in details), details


@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        (body(files={"0": GOOD_FILE}), "files"),
        (body(files="cat.jpg"), "files"),
        (body(files=[dict(GOOD_FILE, metadata=["caption", "foo"])]), "files.0.metadata"),
        (body(files=[dict(GOOD_FILE, metadata="foo")]), "files.0.metadata"),
        (body(files=[["https://example.org/cat.jpg"]]), "files.0"),
        (body(files=[dict(GOOD_FILE, url="https://example.org/" + "a" * 2029)]), "files.0.url"),
        (body(files=[dict(GOOD_FILE, url=12)]), "files.0.url"),
        (body(files=[dict(GOOD_FILE, id=10**30)]), "files.0.id"),
        (body(files=[dict(GOOD_FILE, id="x" * 256)]), "files.0.id"),
        (body(files=[dict(GOOD_FILE, fileName="")]), "files.0.fileName"),
        (body(files=[dict(GOOD_FILE, metadata={"caption": 10**300})]), "files.0.metadata.caption"),
        (body(systemName=10**4000), "systemName"),
        (body(systemName=["legacy"]), "systemName"),
        (body(context=[1, 2]), "context"),
        (body(webhook="http://" + "a" * 2100 + ".example"), "webhook"),
        (body(files=[dict(GOOD_FILE, metadata={"\u00b9": "x"})]), "files.0.metadata.\u00b9"),
        (body(files=[dict(GOOD_FILE, metadata={"9" * 5000: "x", "2": "y"})]), "files.0.metadata.2"),
    ],
)
async def test_wrong_shapes_name_the_field(
    service: RunningService, request_body: dict[str, Any], path: str
) -> None:
    details = error_details(await service.post_import(request_body), 400)
    assert path in details


async def test_a_2049_character_url_is_rejected(service: RunningService) -> None:
    url = "https://example.org/" + "a" * (2049 - len("https://example.org/"))
    assert len(url) == 2049
    details = error_details(await service.post_import(body(files=[dict(GOOD_FILE, url=url)])), 400)
    assert set(details) == {"files.0.url"}
    accepted = await service.post_import(body(files=[dict(GOOD_FILE, url=url[:2048])]))
    assert accepted.status_code == 200, accepted.text


async def test_1001_files_are_rejected(service: RunningService) -> None:
    files = [dict(GOOD_FILE, id=f"f-{i}") for i in range(1001)]
    details = error_details(await service.post_import(body(files=files)), 400)
    assert set(details) == {"files"}


@ON_BOTH_DATABASES
@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        (body(systemName="leg\x00acy"), "systemName"),
        (body(files=[dict(GOOD_FILE, id="cat\x00")]), "files.0.id"),
        (body(files=[dict(GOOD_FILE, fileName="\x00")]), "files.0.fileName"),
        (body(files=[dict(GOOD_FILE, mediaType="image\x00")]), "files.0.mediaType"),
        (body(files=[dict(GOOD_FILE, metadata={"caption": "a\x00b"})]), "files.0.metadata.caption"),
        (body(files=[dict(GOOD_FILE, metadata={"cap\x00tion": "x"})]), "files.0.metadata"),
        (body(context={"deep": {"er": ["ok", "n\x00ul"]}}), "context.deep.er.1"),
        (body(files=[dict(GOOD_FILE, url="https://example.org/\x00.jpg")]), "files.0.url"),
        (body(webhook="https://example.org/\x00"), "webhook"),
    ],
)
async def test_nul_characters_are_rejected_by_name(
    service: RunningService, request_body: dict[str, Any], path: str
) -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb: refuse it before it gets there."""
    details = error_details(await service.post_import(request_body), 400)
    assert path in details
    assert "NUL" in details[path] or "control" in details[path]


@ON_BOTH_DATABASES
@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b'{"systemName": "\\ud800", "files": []}', "systemName"),
        (
            b'{"systemName": "a", "files": [{"url": "https://e.org/a", "id": "\\udfff", "fileName": "a"}]}',
            "files.0.id",
        ),
        (b'{"systemName": "a", "files": [], "context": {"\\ud83d": 1}}', "context"),
        (b'{"systemName": "a", "files": [], "context": {"a": "x\\ud800y"}}', "context.a"),
        (
            b'{"systemName": "a", "files": [{"url": "https://e.org/a", "id": "a", "fileName": "a",'
            b' "metadata": {"caption": "x\\ud83dy"}}]}',
            "files.0.metadata.caption",
        ),
    ],
)
async def test_unpaired_surrogates_are_rejected_by_name(
    service: RunningService, raw: bytes, path: str
) -> None:
    """JSON can escape half a UTF-16 pair; no UTF-8 database can store it."""
    details = error_details(await post_raw(service, raw), 400)
    assert path in details
    assert not [text for text in details.values() if "codec" in str(text)], details


@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        (body(systemName=" "), "systemName"),
        (body(systemName="\t\r\n \u3000"), "systemName"),
        (body(files=[dict(GOOD_FILE, id="   ")]), "files.0.id"),
        (body(files=[GOOD_FILE, dict(GOOD_FILE, id="\u00a0")]), "files.1.id"),
        (body(files=[dict(GOOD_FILE, fileName=" ")]), "files.0.fileName"),
        (body(files=[dict(GOOD_FILE, fileName="\u2003\u2028")]), "files.0.fileName"),
    ],
)
async def test_blank_names_are_rejected_by_name(
    service: RunningService, request_body: dict[str, Any], path: str
) -> None:
    """Whitespace alone is no system name, external id or title a person can find again."""
    details = error_details(await service.post_import(request_body), 400)
    assert set(details) == {path}
    assert "whitespace" in details[path]


FORBIDDEN_IN_NAMES = [
    ("cat\u202egpj.exe", "U+202E"),
    ("\u202aleft", "U+202A"),
    ("a\u202db", "U+202D"),
    ("a\u2066b\u2069", "U+2066"),
    ("isolate\u2069", "U+2069"),
    ("tab\there", "U+0009"),
    ("new\nline", "U+000A"),
    ("bell\x07", "U+0007"),
    ("del\x7f", "U+007F"),
    ("next\x85line", "U+0085"),
    ("csi\x9b", "U+009B"),
    ("zero\u200bwidth", "U+200B"),
    ("left\u200emark", "U+200E"),
    ("right\u200fmark", "U+200F"),
    ("arabic\u061cmark", "U+061C"),
    ("\ufeffbom", "U+FEFF"),
    ("soft\xadhyphen", "U+00AD"),
    ("mongolian\u180eseparator", "U+180E"),
    ("line\u2028separator", "U+2028"),
    ("paragraph\u2029separator", "U+2029"),
    ("word\u2060joiner", "U+2060"),
    ("function\u2061application", "U+2061"),
    ("hangul\u3164filler", "U+3164"),
    ("\u115fchoseong", "U+115F"),
    ("halfwidth\uffa0filler", "U+FFA0"),
]


@pytest.mark.parametrize(("file_name", "code_point"), FORBIDDEN_IN_NAMES)
async def test_control_and_bidi_characters_in_file_names_are_rejected(
    service: RunningService, file_name: str, code_point: str
) -> None:
    """A download name that reorders itself ("cat\u202egpj.exe" shows as "catexe.jpg") or holds controls."""
    files = [GOOD_FILE, dict(GOOD_FILE, id="2", fileName=file_name)]
    details = error_details(await service.post_import(body(files=files)), 400)
    assert set(details) == {"files.1.fileName"}
    assert code_point in details["files.1.fileName"]


@pytest.mark.parametrize(("name", "code_point"), FORBIDDEN_IN_NAMES)
async def test_control_and_invisible_characters_in_ids_are_rejected(
    service: RunningService, name: str, code_point: str
) -> None:
    """An external id or system name that looks like another one ("a\u200bb" and "ab") is refused."""
    files = [GOOD_FILE, dict(GOOD_FILE, id=name)]
    details = error_details(await service.post_import(body(systemName=name, files=files)), 400)
    assert set(details) == {"systemName", "files.1.id"}
    assert code_point in details["systemName"]
    assert code_point in details["files.1.id"]


@ON_BOTH_DATABASES
async def test_odd_but_valid_unicode_is_accepted(service: RunningService) -> None:
    odd = "cat \U0001f408\u200d\u2b1b e\u0301 \uffff"
    caption = "\u202e\u200f\ufeff" + odd  # metadata is not a name: it may hold the marks names refuse
    response = await service.post_import(
        body(systemName=odd, files=[dict(GOOD_FILE, id=odd, fileName=odd, metadata={"caption": caption})])
    )
    assert response.status_code == 200, response.text
    status = await service.status(response.json()["id"])
    assert status["systemName"] == odd


@ON_BOTH_DATABASES
async def test_numbers_json_allows_are_stored(service: RunningService) -> None:
    context = {"big": 10**300, "small": -(10**300), "float": 1.7976931348623157e308, "tiny": 5e-324}
    response = await service.post_import(body(context=context))
    assert response.status_code == 200, response.text
    assert (await service.status(response.json()["id"]))["finished"] is False


async def test_deeply_nested_context_is_rejected(service: RunningService) -> None:
    nested: Any = "x"
    for _ in range(200):
        nested = [nested]
    details = error_details(await service.post_import(body(context={"n": nested})), 400)
    assert any(path.startswith("context") for path in details)


@pytest.mark.parametrize("key", ["k" * 256, "\u00e9", ""])
async def test_bad_idempotency_keys_are_rejected(service: RunningService, key: str) -> None:
    response = await service.client.post(
        IMPORT,
        content=json.dumps(body()).encode(),
        headers=[
            *service.tenant.headers.items(),
            *JSON.items(),
            ("Idempotency-Key", key.encode("latin-1")),
        ],
    )
    assert "Idempotency-Key" in error_details(response, 400)


async def test_two_idempotency_keys_are_rejected(service: RunningService) -> None:
    response = await service.client.post(
        IMPORT,
        content=json.dumps(body()).encode(),
        headers=[
            *service.tenant.headers.items(),
            *JSON.items(),
            ("Idempotency-Key", "first-key"),
            ("Idempotency-Key", "second-key"),
        ],
    )
    assert error_details(response, 400) == {"Idempotency-Key": "must be given once"}


@pytest.mark.parametrize("order", ["valid first", "invalid first"])
async def test_two_authorization_headers_are_rejected(service: RunningService, order: str) -> None:
    """Before: the first one counted, so the same request was a 200 or a 401 by header order."""
    tokens = [service.tenant.headers["Authorization"], "Bearer fi_not-a-token"]
    if order == "invalid first":
        tokens.reverse()
    response = await service.client.get(
        "/api/v1/import/files/status",
        params={"id": "j1"},
        headers=[("Authorization", token) for token in tokens],
    )
    assert error_details(response, 400) == {"Authorization": "must be given once"}


async def test_a_300_character_idempotency_key_is_rejected(service: RunningService) -> None:
    response = await service.post_import(body(), headers={"Idempotency-Key": "k" * 300})
    assert "Idempotency-Key" in error_details(response, 400)


async def test_status_needs_an_id(service: RunningService) -> None:
    response = await service.client.get(STATUS, headers=service.tenant.headers)
    assert set(error_details(response, 400)) == {"id"}


@ON_BOTH_DATABASES
@pytest.mark.parametrize(
    ("params", "status"), [({"id": ""}, 400), ({"id": "j\x00"}, 400), ({"id": "x" * 65}, 400)]
)
async def test_status_id_is_validated(service: RunningService, params: dict[str, str], status: int) -> None:
    response = await service.client.get(STATUS, params=params, headers=service.tenant.headers)
    assert "id" in error_details(response, status)


@ON_BOTH_DATABASES
@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"ids": "a,\x00b"}, "ids"),
        ({"ids": ","}, "ids"),
        ({"ids": ",".join(f"m{i}" for i in range(101))}, "ids"),
        ({"systemName": "s\x00", "externalId": "e"}, "systemName"),
        ({"systemName": "s", "externalId": "e\x00"}, "externalId"),
        ({"systemName": "s"}, "externalId"),
        ({}, "query"),
    ],
)
async def test_media_library_queries_are_validated(
    service: RunningService, params: dict[str, str], path: str
) -> None:
    response = await service.client.get("/api/v1/mediaLibrary", params=params, headers=service.tenant.headers)
    assert path in error_details(response, 400)


@pytest.mark.parametrize(
    "params",
    [
        {"ids": "m1", "systemName": "s", "externalId": "e"},
        {"ids": "m1", "systemName": "s"},
        {"ids": "m1", "externalId": "e"},
    ],
)
async def test_media_library_ids_cannot_be_combined_with_a_key(
    service: RunningService, params: dict[str, str]
) -> None:
    """Two lookups in one query: answering either would hide which one the client meant."""
    response = await service.client.get("/api/v1/mediaLibrary", params=params, headers=service.tenant.headers)
    details = error_details(response, 400)
    assert set(details) == {"ids"}
    assert "cannot be combined" in details["ids"]
    assert all(name in details["ids"] for name in params if name != "ids")


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (STATUS, "id=j1&id=j2"),
        ("/api/v1/mediaLibrary", "ids=a&ids=b"),
        ("/api/v1/mediaLibrary", "systemName=s&externalId=e&externalId=f"),
    ],
)
async def test_repeated_query_parameters_are_rejected(service: RunningService, path: str, query: str) -> None:
    """Taking the last of several values would hide the client's bug."""
    response = await service.client.get(f"{path}?{query}", headers=service.tenant.headers)
    details = error_details(response, 400)
    assert set(details) == {query.rsplit("&", 1)[1].split("=")[0]}
    response = await service.client.get(f"{path}?{query}")
    error_details(response, 401)


@ON_BOTH_DATABASES
async def test_media_ids_with_nul_are_rejected(service: RunningService) -> None:
    response = await service.client.get("/api/v1/mediaLibrary/m%00x", headers=service.tenant.headers)
    assert "mediaId" in error_details(response, 400)
    response = await service.client.get("/assets/m%00x/cat.jpg")
    assert "mediaId" in error_details(response, 400)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer " + "x" * 8000},
    ],
)
async def test_bad_credentials_are_401(service: RunningService, headers: dict[str, str]) -> None:
    response = await service.client.get(STATUS, params={"id": "j"}, headers=headers)
    error_details(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
