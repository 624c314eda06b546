"""``delete_if_written_before``: a blob written again since it was listed is kept."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fileimport.core.storage import open_storage


@pytest.mark.parametrize("content_addressed", [False, True])
async def test_old_blobs_go_and_freshly_rewritten_ones_stay(tmp_path: Path, content_addressed: bool) -> None:
    storage = open_storage((tmp_path / "blobs").as_uri())
    now = datetime.now(UTC)
    for name in ("old", "rewritten"):
        source = tmp_path / f"{name}.bin"
        source.write_bytes(name.encode())
        await storage.put_file(f"sha256/{name}", source)
    an_hour_ago = (now - timedelta(hours=1)).timestamp()
    for name in ("old", "rewritten"):
        os.utime(tmp_path / "blobs" / "sha256" / name, (an_hour_ago, an_hour_ago))
    listed = {blob.key: blob.last_modified async for blob in storage.list_blobs("sha256/")}
    assert all(modified < now - timedelta(minutes=30) for modified in listed.values())

    # An import writes "rewritten" again after the sweep listed it.
    again = tmp_path / "again.bin"
    again.write_bytes(b"rewritten")
    # (Content-addressed, the bytes are not written again: only the time of writing is refreshed.)
    await storage.put_file("sha256/rewritten", again, content_addressed=content_addressed)

    cutoff = now - timedelta(minutes=10)
    assert await storage.delete_if_written_before("sha256/old", cutoff) is True
    assert await storage.delete_if_written_before("sha256/rewritten", cutoff) is False
    assert await storage.delete_if_written_before("sha256/absent", cutoff) is False
    assert {key async for key in storage.list_keys("sha256/")} == {"sha256/rewritten"}
    assert [p.name for p in (tmp_path / "blobs" / "sha256").iterdir()] == ["rewritten"]
