"""A webhook receiver on 127.0.0.1: how the bench learns, as a client would, that a job finished.

The service POSTs a signed ``import.files.finished`` message to a job's
``webhook`` URL when the job finishes (README "Webhook"). The receiver answers
204 at once, notes the ``time.perf_counter()`` of the request's arrival under
the job id of the body (``"id"``), and checks the Standard Webhooks signature
with the project's secret; a bad signature is recorded as the job's error.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

HOOK_PATH = "/hook/"


@dataclass(frozen=True)
class Arrival:
    """The first delivery of one job's webhook: when it arrived, on which path, and what was wrong."""

    at: float
    path: str
    error: str | None


class WebhookReceiver:
    """Records the first webhook of every job id; ``wait`` blocks until one arrives."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)
        self._arrivals: dict[str, Arrival] = {}
        self._errors: list[str] = []  # deliveries with no job id to file them under
        self._changed = threading.Condition()
        self._tags = itertools.count(1)
        self.deliveries = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                self.send_response(204)
                self.end_headers()
                self.wfile.flush()
                receiver._record(at, self.path, body, dict(self.headers.items()))

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no line on stderr per delivery

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def new_url(self) -> str:
        """A fresh ``http://127.0.0.1:PORT/hook/N`` for one job's ``webhook``."""
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}{next(self._tags)}"

    def _record(self, at: float, path: str, body: bytes, headers: dict[str, str]) -> None:
        error = None
        try:
            payload = self._webhook.verify(body, headers)
        except Exception as exc:
            error = f"bad webhook signature on {path}: {type(exc).__name__}: {exc}"
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        job_id = payload.get("id") if isinstance(payload, dict) else None
        with self._changed:
            self.deliveries += 1
            if not isinstance(job_id, str):
                self._errors.append(error or f"webhook on {path} without a job id: {body[:200]!r}")
            elif job_id not in self._arrivals:
                self._arrivals[job_id] = Arrival(at, path, error)
            elif error:  # a redelivery (at least once) must be signed too
                self._errors.append(error)
            self._changed.notify_all()

    def wait(self, job_id: str, timeout: float) -> Arrival | None:
        """The first arrival of ``job_id``'s webhook, waiting up to ``timeout`` seconds; None if none came.

        Raises ``WebhookError`` when a delivery that names no job (or a
        redelivery) had a bad signature or body.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self._errors:
                    raise WebhookError("; ".join(self._errors))
                found = self._arrivals.get(job_id)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._changed.wait(remaining)


class WebhookError(Exception):
    """A webhook reached the receiver with a bad signature or without a job id."""


@contextmanager
def webhook_receiver(secret: str) -> Iterator[WebhookReceiver]:
    """A running receiver on a free port of 127.0.0.1 until the block exits."""
    receiver = WebhookReceiver(secret)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.close()
