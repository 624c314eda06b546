"""The service with its blobs in an S3-compatible bucket (moto on loopback), as in production."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest

from tests.support.images import png_bytes
from tests.support.origin import serve_directory
from tests.support.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Bucket
from tests.support.service import run_service

pytestmark = pytest.mark.s3


def bucket_keys(bucket: S3Bucket, prefix: str) -> dict[str, int]:
    """Every object under ``prefix`` and its size, read with boto3 (not through the service)."""
    client = boto3.client(
        "s3",
        endpoint_url=bucket.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix=prefix + "/")
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


async def test_imported_files_live_in_the_bucket_and_are_served_from_it(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    origin_dir = tmp_path / "origin"
    origin_dir.mkdir()
    files = {
        "small.png": png_bytes(40, 30),
        "noisy.png": png_bytes(300, 200, noise=True),
        # Over obstore's 5 MiB multipart threshold.
        "large.bin": os.urandom(6 * 1024 * 1024 + 123),
    }
    for name, data in files.items():
        (origin_dir / name).write_bytes(data)
    storage_url = s3_bucket.fresh_url()
    prefix = storage_url.removeprefix(f"s3://{s3_bucket.bucket}/")

    with serve_directory(origin_dir) as origin:
        async with run_service(
            tmp_path / "var", storage_url=storage_url, storage_options=s3_bucket.options
        ) as service:
            ready = await service.client.get("/readyz")
            assert ready.status_code == 200, ready.text
            status = await service.import_and_wait(
                {
                    "systemName": "s3",
                    "files": [
                        {"url": f"{origin}/{name}", "id": name, "fileName": name, "metadata": {}}
                        for name in files
                    ],
                }
            )
            assert [(r["externalId"], r["status"]) for r in status["files"]] == [
                (name, "success") for name in files
            ]

            for result in status["files"]:
                data = files[result["externalId"]]
                digest = hashlib.sha256(data).hexdigest()
                entry = await service.media_entry(result["mediaId"])
                assert (entry["asset"]["sha256"], entry["asset"]["size"]) == (digest, len(data))

                served = await service.client.get(entry["asset"]["url"])
                assert served.status_code == 200
                assert served.headers["content-length"] == str(len(data))
                assert hashlib.sha256(served.content).hexdigest() == digest

                first, last = len(data) // 3, min(len(data) // 3 + 999, len(data) - 1)
                partial = await service.client.get(
                    entry["asset"]["url"], headers={"Range": f"bytes={first}-{last}"}
                )
                assert partial.status_code == 206
                assert partial.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
                assert partial.content == data[first : last + 1]

                suffix = await service.client.get(entry["asset"]["url"], headers={"Range": "bytes=-100"})
                assert suffix.status_code == 206
                assert suffix.content == data[-100:]

    stored = bucket_keys(s3_bucket, prefix)
    expected = {
        f"{prefix}/sha256/{d[:2]}/{d[2:4]}/{d}": len(data)
        for data in files.values()
        for d in [hashlib.sha256(data).hexdigest()]
    }
    assert stored == expected
    local = [p for p in (tmp_path / "var").rglob("*") if p.is_file() and "sqlite3" not in p.name]
    assert local == [], "nothing but the database should be written locally"
