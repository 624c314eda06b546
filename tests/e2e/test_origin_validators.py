"""Whatever ETag and Last-Modified an origin sends, the file imports; on every database.

SQLite does not enforce VARCHAR lengths, PostgreSQL does: media_entries keeps
``origin_etag`` in 512 characters and ``origin_last_modified`` in 64, while
HTTP sets no limit and the origin is anyone on the internet.
"""

from __future__ import annotations

from pytest_httpserver import HTTPServer

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
