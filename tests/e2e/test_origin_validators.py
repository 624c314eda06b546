"""Whatever ETag and Last-Modified an origin sends, the file imports; on every database.

SQLite does not enforce VARCHAR lengths, PostgreSQL does: media_entries keeps
``origin_etag`` in 512 characters and ``origin_last_modified`` in 64, while
HTTP sets no limit and the origin is anyone on the internet.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator

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


async def test_a_job_posted_later_wins_over_an_older_one_that_finishes_after_it(
    service: RunningService, httpserver: HTTPServer
) -> None:
    """Job 1 re-imports a file and waits for its origin; job 2, posted after it, imports other
    bytes for the same key and finishes first. Job 1's answer (here a 304) comes last: it is
    skipped and changes nothing, so the entry keeps job 2's bytes, source URL and ETag."""
    first_body, second_body = png_bytes(5, 5), png_bytes(6, 6)
    conditional, answer_304 = held_304_origin(httpserver, first_body)
    from_a = [{"url": httpserver.url_for("/a.png"), "id": "k", "fileName": "k"}]
    (created,) = (await service.import_and_wait({"systemName": "s", "files": from_a}))["files"]
    assert created["status"] == "success"

    job_1 = (await service.post_import({"systemName": "s", "files": from_a})).json()["id"]
    with anyio.fail_after(10):
        while conditional != [False, True]:  # job 1's conditional request waits at the origin
            await anyio.sleep(0.02)
    with serve_files({"/b.png": second_body}) as other:
        from_b = [{"url": other.url_for("/b.png"), "id": "k", "fileName": "k"}]
        (changed,) = (await service.import_and_wait({"systemName": "s", "files": from_b}))["files"]
    assert changed["status"] == "success"
    answer_304.set()
    (late,) = (await service.wait_finished(job_1))["files"]

    assert late["status"] == "skipped", late
    assert "a job posted later" in late["reason"]
    entry = await service.media_entry(created["mediaId"])
    assert entry["asset"]["sha256"] == hashlib.sha256(second_body).hexdigest()
    assert (entry["version"], conditional) == (2, [False, True])


async def test_a_304_for_an_entry_an_older_job_changed_meanwhile_downloads_the_file_again(
    service: RunningService, httpserver: HTTPServer
) -> None:
    """Job 1 asks the origin whether the entry's file changed; before the 304 comes, job 0
    (posted before it, its download slower) records other bytes for the key. The 304 spoke of
    the bytes the entry held before: job 1 downloads the file whole, and the entry ends with
    bytes that match its source URL and ETag (before: job 0's bytes under job 1's URL and
    ETag, and every later import of that URL a 304 that kept them)."""
    first_body, second_body = png_bytes(5, 5), png_bytes(6, 6)
    conditional, answer_304 = held_304_origin(httpserver, first_body)
    answer_b, asked_b = threading.Event(), threading.Event()
    from_a = [{"url": httpserver.url_for("/a.png"), "id": "k", "fileName": "k"}]
    (created,) = (await service.import_and_wait({"systemName": "s", "files": from_a}))["files"]
    assert created["status"] == "success"

    with serve_files({"/b.png": second_body}, hold=answer_b, arrived=asked_b) as other:
        from_b = [{"url": other.url_for("/b.png"), "id": "k", "fileName": "k"}]
        job_0 = (await service.post_import({"systemName": "s", "files": from_b})).json()["id"]
        job_1 = (await service.post_import({"systemName": "s", "files": from_a})).json()["id"]
        with anyio.fail_after(10):
            while conditional != [False, True] or not asked_b.is_set():  # both wait at their origins
                await anyio.sleep(0.02)
        answer_b.set()
        (changed,) = (await service.wait_finished(job_0))["files"]
    assert changed["status"] == "success"
    answer_304.set()
    (result,) = (await service.wait_finished(job_1))["files"]

    assert result["status"] == "success", result
    assert conditional == [False, True, False]  # the first import, job 1's conditional try, its download
    entry = await service.media_entry(created["mediaId"])
    assert entry["asset"]["sha256"] == hashlib.sha256(first_body).hexdigest()
    served = await service.client.get(entry["asset"]["url"])
    assert served.content == first_body


def held_304_origin(
    httpserver: HTTPServer, body: bytes, etag: str = '"v1"'
) -> tuple[list[bool], threading.Event]:
    """``/a.png`` on ``httpserver``: ``body`` with ``etag``, and to a request conditional on that
    ETag a 304 held until the returned event is set. The list says, request by request, whether
    it was conditional."""
    conditional: list[bool] = []
    answer_304 = threading.Event()

    def answer(request: Request) -> Response:
        conditional.append(request.headers.get("If-None-Match") == etag)
        if conditional[-1]:
            answer_304.wait(30)
            return Response(status=304, headers={"ETag": etag})
        return Response(body, content_type="image/png", headers={"ETag": etag})

    httpserver.expect_request("/a.png").respond_with_handler(answer)
    return conditional, answer_304


@contextlib.contextmanager
def serve_files(
    files: dict[str, bytes], hold: threading.Event | None = None, arrived: threading.Event | None = None
) -> Iterator[HTTPServer]:
    """A second origin on 127.0.0.1 serving ``files`` (PNG); a request sets ``arrived``, and
    its answer waits for ``hold``, when given (the pytest-httpserver of the test serves one
    request at a time, so a waiting answer there would hold this origin's up too)."""

    def answer(body: bytes) -> Callable[[Request], Response]:
        def respond(_request: Request) -> Response:
            if arrived is not None:
                arrived.set()
            if hold is not None:
                hold.wait(30)
            return Response(body, content_type="image/png")

        return respond

    server = HTTPServer(host="127.0.0.1")
    for path, body in files.items():
        server.expect_request(path).respond_with_handler(answer(body))
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()
