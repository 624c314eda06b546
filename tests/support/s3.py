"""A real S3-compatible endpoint for tests: moto's server on loopback.

Use the ``s3_bucket`` fixture (session scope) from a test module by importing
it, or register this module with ``pytest_plugins``. It yields an `S3Bucket`
whose ``url`` and ``options`` go straight into ``open_storage``; tests that
share it should write under their own prefix (`S3Bucket.url_for`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on a running moto server, with obstore options to reach it."""

    endpoint: str
    bucket: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``s3://bucket``: the whole bucket."""
        return f"s3://{self.bucket}"

    def url_for(self, prefix: str) -> str:
        """``s3://bucket/prefix``: a store whose keys live under ``prefix``."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def fresh_url(self) -> str:
        """A URL under a new random prefix, so tests sharing the bucket stay apart."""
        return self.url_for(f"t-{uuid.uuid4().hex}")


def obstore_options(endpoint: str) -> dict[str, str]:
    """obstore S3 and client options for a plain-HTTP endpoint with test credentials."""
    return {
        "endpoint": endpoint,
        "region": REGION,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "allow_http": "true",
    }


@pytest.fixture(scope="session")
def s3_bucket() -> Iterator[S3Bucket]:
    """Start moto's S3 server on 127.0.0.1 (free port), create a bucket, stop at the end.

    Skips the requesting tests, saying why, when moto or boto3 is missing or the
    server does not start.
    """
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(f"moto[server] is not installed, cannot run S3 tests: {exc}")

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # start() waits forever when the server thread dies before listening.
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(START_TIMEOUT)
    if starter.is_alive():
        pytest.skip(f"moto S3 server did not start on 127.0.0.1 within {START_TIMEOUT} s")
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )
        bucket = f"fileimport-test-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
    except Exception as exc:
        server.stop()
        pytest.skip(f"moto S3 server could not start on 127.0.0.1: {exc!r}")
    try:
        yield S3Bucket(endpoint=endpoint, bucket=bucket, options=obstore_options(endpoint))
    finally:
        server.stop()
