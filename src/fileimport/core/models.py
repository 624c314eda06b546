"""Imports every feature's tables so ``Base.metadata`` is complete (Alembic)."""

from fileimport.auth.models import ApiToken
from fileimport.core.db import Base
from fileimport.imports.models import IdempotencyKey, ImportFile, ImportJob
from fileimport.media.models import MediaEntry
from fileimport.projects.models import Project
from fileimport.webhooks.models import WebhookDelivery

__all__ = [
    "ApiToken",
    "Base",
    "IdempotencyKey",
    "ImportFile",
    "ImportJob",
    "MediaEntry",
    "Project",
    "WebhookDelivery",
]
