"""Webhook messages: built when a job finishes, signed, delivered at least once.

Signing follows Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) with
the project's ``whsec_`` secret, and adds ``x-livingdocs-signature:
sha256=<hex HMAC-SHA256 of the body>`` keyed with the same secret's bytes for
clients written against the reference. Retries follow the configured schedule
(Standard Webhooks' default): network errors (a host name that does not
resolve included), timeouts, 408, 429 and 5xx are retried; any other answer
outside 2xx, a blocked address and a URL no connection can be made to end the
delivery as failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from fileimport.core.address_guard import BlockedAddressError, HostNotFoundError
from fileimport.core.db import new_id, utcnow
from fileimport.core.fetcher import FetchError, describe_network_error, parse_http_url
from fileimport.core.metrics import WEBHOOK_ATTEMPTS
from fileimport.imports.models import ImportJob
from fileimport.imports.repository import FileResultRow
from fileimport.imports.states import FileStatus
from fileimport.webhooks.models import DeliveryState, WebhookDelivery

log = structlog.get_logger(__name__)

EVENT_FINISHED = "import.files.finished"
MAX_ERROR_CHARS = 500


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def build_payload(job: ImportJob, files: Sequence[FileResultRow]) -> dict[str, Any]:
    """The ``import.files.finished`` body (SPEC.md "Webhook")."""
    counts = {status: 0 for status in (FileStatus.SUCCESS, FileStatus.SKIPPED, FileStatus.FAILED)}
    failed = []
    for f in files:
        counts[FileStatus(f.status)] = counts.get(FileStatus(f.status), 0) + 1
        if f.status == FileStatus.FAILED:
            failed.append({"externalId": f.external_id, "code": f.code, "reason": f.reason})
    return {
        "id": job.id,
        "event": EVENT_FINISHED,
        "state": job.state,
        "finished": True,
        "systemName": job.system_name,
        "startedAt": _iso(job.started_at),
        "finishedAt": _iso(job.finished_at),
        "overview": {
            "total": len(files),
            "success": counts[FileStatus.SUCCESS],
            "skipped": counts[FileStatus.SKIPPED],
            "failed": counts[FileStatus.FAILED],
            "details": {"failed": failed},
        },
        "context": job.context,
    }


def schedule_delivery(
    session: Session | AsyncSession, job: ImportJob, files: Sequence[FileResultRow]
) -> WebhookDelivery | None:
    """Add the job's webhook delivery, due now, to the session (None without a webhook URL)."""
    if not job.webhook_url:
        return None
    delivery = WebhookDelivery(
        id=new_id("msg_", 16),
        job_id=job.id,
        project_id=job.project_id,
        url=job.webhook_url,
        payload=json.dumps(build_payload(job, files), separators=(",", ":"), ensure_ascii=False),
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(delivery)
    return delivery


def sign(secret: str, message_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """Signature headers for ``body`` (Standard Webhooks v1 and the reference's header)."""
    signature = Webhook(secret).sign(message_id, timestamp, body)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    legacy = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "x-livingdocs-signature": f"sha256={legacy}",
    }


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one POST: ``status`` None for a network error."""

    delivered: bool
    retryable: bool
    status: int | None
    error: str | None


async def attempt_delivery(
    session: aiohttp.ClientSession, delivery: WebhookDelivery, secret: str
) -> AttemptResult:
    """POST the delivery once; never raises for the receiver's faults.

    ``session`` comes from ``create_guarded_session`` (the address guard and
    the webhook timeout are its). Redirects are not followed: a 3xx answer is
    a failed delivery, as any answer outside 2xx other than 408, 429 and 5xx.
    """
    try:
        # The same URL checks as a file's (SPEC.md "Webhook"), before any DNS
        # lookup or connection: a host or port no connection can be made to.
        url = parse_http_url(delivery.url)
    except FetchError as exc:
        return AttemptResult(False, False, None, exc.reason[:MAX_ERROR_CHARS])
    headers = sign(secret, delivery.id, utcnow(), delivery.payload)
    headers["content-type"] = "application/json"
    try:
        async with session.post(
            url, data=delivery.payload.encode(), headers=headers, allow_redirects=False
        ) as response:
            status = response.status
    except BlockedAddressError as exc:
        return AttemptResult(False, False, None, str(exc))
    except HostNotFoundError as exc:
        # The receiver's DNS may be fixed before the schedule runs out.
        return AttemptResult(False, True, None, str(exc)[:MAX_ERROR_CHARS])
    except TimeoutError:  # aiohttp's timeouts are TimeoutError too
        return AttemptResult(False, True, None, "timed out")
    except (aiohttp.ClientError, OSError) as exc:
        error = f"connection failed: {describe_network_error(exc)}"
        return AttemptResult(False, True, None, error[:MAX_ERROR_CHARS])
    if 200 <= status < 300:
        return AttemptResult(True, False, status, None)
    retryable = status in (408, 429) or status >= 500
    return AttemptResult(False, retryable, status, f"receiver answered {status}")


def record_attempt(
    delivery: WebhookDelivery, result: AttemptResult, schedule: list[float], now: datetime
) -> None:
    """Apply one attempt's result: delivered, retry at the next step of ``schedule`` (seconds), or failed."""
    delivery.attempts += 1
    delivery.last_status = result.status
    delivery.last_error = result.error
    if result.delivered:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    elif result.retryable and delivery.attempts <= len(schedule):
        delivery.next_attempt_at = now + timedelta(seconds=schedule[delivery.attempts - 1])
    else:
        delivery.state = DeliveryState.FAILED
        delivery.next_attempt_at = None
    WEBHOOK_ATTEMPTS.labels(
        outcome=delivery.state if delivery.state != DeliveryState.PENDING else "retry"
    ).inc()
    log.info(
        "webhook.delivery.attempted",
        delivery_id=delivery.id,
        job_id=delivery.job_id,
        attempt=delivery.attempts,
        state=delivery.state,
        status=result.status,
        error=result.error,
    )
