"""Whatever ETag and Last-Modified an origin sends, the file imports; on every database.

SQLite does not enforce VARCHAR lengths, PostgreSQL does: media_entries keeps
``origin_etag`` in 512 characters and ``origin_last_modified`` in 64, while
HTTP sets no limit and the origin is anyone on the internet.
"""

from __future__ import annotations

import hashlib
import threading

import anyio
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.support.images import png_bytes
from tests.support.service import RunningService

LONG_ETAG = '"' + "e" * 600 + '"'
LONG_LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 40 + "(with a comment the origin added)"


async def test_long_etag_and_last_modified_do_not_fail_the_file(
    service: RunningService, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/etag.png").respond_with_data(
        png_bytes(9, 9), content_type="image/png", headers={"ETag": LONG_ETAG}
    )
    httpserver.expect_request("/last-modified.png").respond_with_data(
        png_bytes(8, 9), content_type="image/png", headers={"Last-Modified": LONG_LAST_MODIFIED}
    )
    files = [
        {"url": httpserver.url_for("/etag.png"), "id": "etag", "fileName": "etag", "metadata": {}},
        {"url": httpserver.url_for("/last-modified.png"), "id": "lm", "fileName": "lm", "metadata": {}},
    ]
    first = await service.import_and_wait({"systemName": "validators", "files": files})
    assert [(r["externalId"], r["status"]) for r in first["files"]] == [
        ("etag", "success"),
        ("lm", "success"),
    ]

    again = await service.import_and_wait({"systemName": "validators", "files": files})
    assert [r["status"] for r in again["files"]] == ["skipped", "skipped"]


async def test_a_missing_blob_is_downloaded_again_although_the_origin_answers_304(
    service: RunningService, httpserver: HTTPServer
) -> None:
    # The conditional re-import gets 304 Not Modified; with the entry's blob gone
    # from the store, that 304 cannot be trusted: the file is fetched whole again.
    body = png_bytes(7, 7)
    etag = '"v1"'
    conditional: list[bool] = []

    def answer(request: Request) -> Response:
        conditional.append(request.headers.get("If-None-Match") == etag)
        if conditional[-1]:
            return Response(status=304, headers={"ETag": etag})
        return Response(body, content_type="image/png", headers={"ETag": etag})

    httpserver.expect_request("/logo.png").respond_with_handler(answer)
    files = [{"url": httpserver.url_for("/logo.png"), "id": "logo", "fileName": "logo"}]
    (first,) = (await service.import_and_wait({"systemName": "s", "files": files}))["files"]
    assert first["status"] == "success"
    entry = await service.media_entry(first["mediaId"])
    blob = service.settings.data_dir / "blobs" / entry["asset"]["key"]
    blob.unlink()
    missing = await service.client.get(entry["asset"]["url"])
    assert missing.status_code == 404

    (again,) = (await service.import_and_wait({"systemName": "s", "files": files}))["files"]

    assert (again["status"], again["mediaId"]) == ("skipped", first["mediaId"])
    assert conditional == [False, True, False]  # first, the conditional try, the repair
    assert blob.read_bytes() == body
    served = await service.client.get(entry["asset"]["url"])
    assert (served.status_code, served.content) == (200, body)


async def test_a_304_for_an_entry_another_job_changed_meanwhile_downloads_the_file_again(
    service: RunningService, httpserver: HTTPServer
) -> None:
    """Job 1 asks the origin whether the entry's file changed; before the 304 comes, job 2
    imports other bytes for the same key. The 304 spoke of the old bytes: job 1 downloads
    the file whole, and the entry ends with bytes that match its source URL and ETag (before:
    job 2's bytes under job 1's URL, and every later import of that URL a 304 that kept them)."""
    first_body, second_body = png_bytes(5, 5), png_bytes(6, 6)
    etag = '"v1"'
    conditional: list[bool] = []
    answer_304 = threading.Event()

    def answer(request: Request) -> Response:
        conditional.append(request.headers.get("If-None-Match") == etag)
        if conditional[-1]:
            answer_304.wait(30)
            return Response(status=304, headers={"ETag": etag})
        return Response(first_body, content_type="image/png", headers={"ETag": etag})

    httpserver.expect_request("/a.png").respond_with_handler(answer)
    from_a = [{"url": httpserver.url_for("/a.png"), "id": "k", "fileName": "k"}]
    (created,) = (await service.import_and_wait({"systemName": "s", "files": from_a}))["files"]
    assert created["status"] == "success"

    job_1 = (await service.post_import({"systemName": "s", "files": from_a})).json()["id"]
    with anyio.fail_after(10):
        while conditional != [False, True]:  # job 1's conditional request waits at the origin
            await anyio.sleep(0.02)
    other = HTTPServer(host="127.0.0.1")
    other.expect_request("/b.png").respond_with_data(second_body, content_type="image/png")
    other.start()
    try:
        from_b = [{"url": other.url_for("/b.png"), "id": "k", "fileName": "k"}]
        (changed,) = (await service.import_and_wait({"systemName": "s", "files": from_b}))["files"]
    finally:
        other.stop()
    assert changed["status"] == "success"
    answer_304.set()
    (result,) = (await service.wait_finished(job_1))["files"]

    assert result["status"] == "success", result
    assert conditional == [False, True, False]  # the first import, job 1's conditional try, its download
    entry = await service.media_entry(created["mediaId"])
    assert entry["asset"]["sha256"] == hashlib.sha256(first_body).hexdigest()
    served = await service.client.get(entry["asset"]["url"])
    assert served.content == first_body
