"""Background work of the webhook feature: attempting due deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import aiohttp
import anyio
import structlog
from sqlalchemy.orm import Session

from fileimport.core.db import utcnow
from fileimport.core.runtime import Runtime
from fileimport.webhooks import repository
from fileimport.webhooks.models import DeliveryState, WebhookDelivery
from fileimport.webhooks.service import AttemptResult, attempt_delivery, record_attempt

log = structlog.get_logger(__name__)

CLAIM_LIMIT = 16


async def deliver_due_webhooks(runtime: Runtime, client: aiohttp.ClientSession) -> int:
    """Attempt every delivery that is due now, concurrently; returns how many were attempted.

    ``client`` is the worker's webhook session from ``create_guarded_session``
    (with ``timeout_seconds=settings.webhook_timeout``).
    """
    settings = runtime.settings
    now = utcnow()
    # The claim pushes next_attempt_at past the longest an attempt can take.
    lease_until = now + timedelta(seconds=settings.webhook_timeout * 2 + 5)

    def claim(session: Session) -> tuple[Sequence[WebhookDelivery], dict[int, str]]:
        due = repository.claim_due_deliveries(session, now, lease_until, CLAIM_LIMIT)
        return due, repository.webhook_secrets(session, {d.project_id for d in due})

    due, secrets = await runtime.db.run_in_transaction(claim)
    # The claimed rows, as read under the claim: pending, and leased to this
    # worker until lease_until, so nobody else attempts or changes them meanwhile.

    async def attempt(http_session: aiohttp.ClientSession, delivery: WebhookDelivery) -> None:
        delivery_id = delivery.id
        try:
            result = await attempt_delivery(http_session, delivery, secrets[delivery.project_id])
        except Exception as exc:
            # Counted and retried like a network error: unrecorded, it would be
            # retried forever without a trace, and it must not cancel the
            # attempts running beside it.
            log.exception("webhook.delivery.crashed", delivery_id=delivery_id)
            result = AttemptResult(False, True, None, f"unexpected error ({type(exc).__name__}); see the log")

        def record(session: Session) -> None:
            stored = repository.get_delivery(session, delivery_id)
            if stored is not None and stored.state == DeliveryState.PENDING:
                record_attempt(stored, result, settings.webhook_retry_schedule, utcnow())

        await runtime.db.run_in_transaction(record)

    async with anyio.create_task_group() as tg:
        for delivery in due:
            tg.start_soon(attempt, client, delivery)
    return len(due)


async def seconds_until_next_delivery(runtime: Runtime, cap: float) -> float:
    """Seconds until the earliest pending delivery is due, at most ``cap``."""
    due_at = await runtime.db.run_read(repository.next_due_at)
    if due_at is None:
        return cap
    return max(0.0, min(cap, (due_at - utcnow()).total_seconds()))
