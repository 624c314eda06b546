"""All SQL for webhook deliveries. Sync functions of a `Session`: they run in a worker thread
(`Database.run_in_transaction`, `Database.run_read`), one hop per transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fileimport.projects.models import Project
from fileimport.webhooks.models import DeliveryState, WebhookDelivery


def get_delivery_for_job(session: Session, job_id: str) -> WebhookDelivery | None:
    """The job's webhook delivery, or None (a job without a webhook URL, or not finished)."""
    return session.execute(
        select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    ).scalar_one_or_none()


def claim_due_deliveries(
    session: Session, now: datetime, lease_until: datetime, limit: int
) -> Sequence[WebhookDelivery]:
    """Pending deliveries whose next attempt is due; pushes their next attempt to ``lease_until``.

    Moving ``next_attempt_at`` forward is the lease: another worker will not
    take the same delivery until then, and a crashed worker's claim lapses.
    """
    due = (
        session.execute(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    for delivery in due:
        delivery.next_attempt_at = lease_until
    session.flush()
    return due


def get_delivery(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def next_due_at(session: Session) -> datetime | None:
    """When the earliest pending delivery is due, or None."""
    return session.execute(
        select(WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.state == DeliveryState.PENDING)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(1)
    ).scalar_one_or_none()


def webhook_secrets(session: Session, project_ids: set[int]) -> dict[int, str]:
    """The signing secret of each project, by project id."""
    if not project_ids:
        return {}
    rows = session.execute(select(Project.id, Project.webhook_secret).where(Project.id.in_(project_ids)))
    return {project_id: secret for project_id, secret in rows}
