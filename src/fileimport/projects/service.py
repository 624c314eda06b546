"""Creating and reading projects."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fileimport.projects.config import ProjectConfig
from fileimport.projects.models import Project


class ProjectExistsError(Exception):
    """A project with that name already exists."""


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


async def create_project(session: AsyncSession, name: str, config: ProjectConfig | None = None) -> Project:
    """Store a new project; raises ProjectExistsError when ``name`` is taken."""
    if await get_project(session, name) is not None:
        raise ProjectExistsError(f"project '{name}' already exists")
    project = Project(
        name=name,
        config=(config or ProjectConfig()).to_json(),
        webhook_secret=new_webhook_secret(),
    )
    session.add(project)
    await session.flush()
    return project


async def get_project(session: AsyncSession, name: str) -> Project | None:
    """The project called ``name``, or None."""
    return (await session.execute(select(Project).where(Project.name == name))).scalar_one_or_none()


def project_config(project: Project) -> ProjectConfig:
    """The project's validated media type configuration."""
    return ProjectConfig.model_validate(project.config)


def describe_project(project: Project) -> dict[str, Any]:
    """The project as printed by ``fileimport project show`` (JSON-ready)."""
    return {
        "id": project.id,
        "name": project.name,
        "webhookSecret": project.webhook_secret,
        "createdAt": project.created_at.isoformat(),
        "config": project.config,
    }
