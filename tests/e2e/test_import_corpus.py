"""Importing real files end to end: create, skip on re-import, update on change."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.service import RunningService

pytestmark = pytest.mark.corpus


def corpus_batch(
    manifest: dict[str, dict[str, Any]], origin: str, folders: tuple[str, ...]
) -> list[dict[str, Any]]:
    paths = sorted(p for p in manifest if p.split("/", 1)[0] in folders)
    return [
        {"url": f"{origin}/{quote(path)}", "id": path, "fileName": path.rsplit("/", 1)[-1], "metadata": {}}
        for path in paths
    ]


async def test_corpus_imports_with_manifest_bytes_and_dimensions(
    service: RunningService, corpus_origin: str, corpus_manifest: dict[str, dict[str, Any]]
) -> None:
    files = corpus_batch(corpus_manifest, corpus_origin, ("images", "documents", "audio"))
    assert len(files) >= 30
    status = await service.import_and_wait({"systemName": "corpus", "files": files}, timeout=120)

    assert status["state"] == "success"
    results = {r["externalId"]: r for r in status["files"]}
    assert {r["status"] for r in results.values()} == {"success"}, [
        r for r in results.values() if r["status"] != "success"
    ]
    for path, expected in corpus_manifest.items():
        if path not in results:
            continue
        entry = await service.media_entry(results[path]["mediaId"])
        asset = entry["asset"]
        assert asset["mimeType"] == expected["mime_type"], path
        assert asset["size"] == expected["bytes"], path
        assert asset["sha256"] == expected["sha256"], path
        assert asset.get("width") == expected.get("width"), path
        assert asset.get("height") == expected.get("height"), path
        if expected["mime_type"].startswith("audio/"):
            assert asset["duration"] > 0, path
        served = await service.client.get(asset["url"])
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == expected["sha256"], path
        assert served.headers["content-type"].startswith(expected["mime_type"])
        assert served.headers["etag"] == f'"{expected["sha256"]}"'
        assert served.headers["x-content-type-options"] == "nosniff"


async def test_reimport_skips_then_metadata_change_updates_in_place(
    service: RunningService, corpus_origin: str, corpus_manifest: dict[str, dict[str, Any]]
) -> None:
    files = corpus_batch(corpus_manifest, corpus_origin, ("images",))[:6]
    first = await service.import_and_wait({"systemName": "sync", "files": files})
    media_ids = {r["externalId"]: r["mediaId"] for r in first["files"]}
    assert all(r["status"] == "success" for r in first["files"])

    again = await service.import_and_wait({"systemName": "sync", "files": files})
    assert [(r["status"], r["reason"]) for r in again["files"]] == [("skipped", "already exists")] * len(
        files
    )
    assert {r["externalId"]: r["mediaId"] for r in again["files"]} == media_ids

    changed = [dict(f) for f in files]
    changed[2]["metadata"] = {"caption": "a new caption"}
    third = await service.import_and_wait({"systemName": "sync", "files": changed})
    statuses = [r["status"] for r in third["files"]]
    assert statuses == ["skipped", "skipped", "success", "skipped", "skipped", "skipped"]
    assert {r["externalId"]: r["mediaId"] for r in third["files"]} == media_ids
    entry = await service.media_entry(media_ids[files[2]["id"]])
    assert entry["version"] == 2
    assert entry["metadata"] == {"caption": "a new caption"}

    # The same externalId under another systemName is another entry.
    other = await service.import_and_wait({"systemName": "other-system", "files": files[:1]})
    assert other["files"][0]["status"] == "success"
    assert other["files"][0]["mediaId"] != media_ids[files[0]["id"]]


async def test_asset_range_and_lookup_routes(
    service: RunningService, corpus_origin: str, corpus_manifest: dict[str, dict[str, Any]]
) -> None:
    files = corpus_batch(corpus_manifest, corpus_origin, ("documents",))
    status = await service.import_and_wait({"systemName": "docs", "files": files})
    media_id = status["files"][0]["mediaId"]
    entry = await service.media_entry(media_id)
    url = entry["asset"]["url"]
    assert entry["asset"]["filename"].endswith(".pdf")

    partial = await service.client.get(url, headers={"Range": "bytes=0-1023"})
    assert partial.status_code == 206
    assert partial.content[:4] == b"%PDF"
    assert len(partial.content) == 1024
    assert partial.headers["content-range"] == f"bytes 0-1023/{entry['asset']['size']}"
    assert "attachment" not in partial.headers["content-disposition"]

    found = await service.client.get(
        "/api/v1/mediaLibrary",
        params={"systemName": "docs", "externalId": files[0]["id"]},
        headers=service.tenant.headers,
    )
    assert [e["id"] for e in found.json()["mediaLibraryEntries"]] == [media_id]
    by_ids = await service.client.get(
        "/api/v1/mediaLibrary", params={"ids": f"{media_id},nope"}, headers=service.tenant.headers
    )
    assert [e["id"] for e in by_ids.json()["mediaLibraryEntries"]] == [media_id]
