"""Creating and checking bearer tokens.

A token is ``fi_`` plus 32 random bytes (URL-safe base64); only its SHA-256
is stored, so a leaked database does not leak usable tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fileimport.auth.models import ApiToken
from fileimport.core.db import utcnow
from fileimport.projects.models import Project

SCOPE_WRITE = "public-api:write"
SCOPE_READ = "public-api:read"
KNOWN_SCOPES = (SCOPE_WRITE, SCOPE_READ)
TOKEN_PREFIX = "fi_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's project and scopes."""

    project_id: int
    project_name: str
    scopes: frozenset[str]


def hash_token(token: str) -> str:
    """Hex SHA-256 of the token's UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(
    session: AsyncSession,
    project: Project,
    scopes: list[str],
    *,
    expires_in: timedelta | None = None,
    label: str = "",
) -> str:
    """Store a new token for ``project`` and return it in clear (shown once).

    Raises ValueError for an unknown scope.
    """
    unknown = sorted(set(scopes) - set(KNOWN_SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(KNOWN_SCOPES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            project_id=project.id,
            token_sha256=hash_token(token),
            scopes=sorted(set(scopes)),
            label=label,
            expires_at=utcnow() + expires_in if expires_in else None,
        )
    )
    await session.flush()
    return token


async def list_tokens(session: AsyncSession, project: Project) -> list[ApiToken]:
    """The project's tokens, oldest first (their secrets are not stored, only hashes)."""
    rows = await session.execute(
        select(ApiToken).where(ApiToken.project_id == project.id).order_by(ApiToken.id)
    )
    return list(rows.scalars())


async def revoke_token(session: AsyncSession, project: Project, token: str) -> ApiToken | None:
    """Delete the project's token given by its number (from `list_tokens`) or by the token itself.

    Returns the deleted row, None when the project has no such token. A
    revoked token answers 401 from the next request on.
    """
    query = select(ApiToken).where(ApiToken.project_id == project.id)
    if token.isdigit():
        query = query.where(ApiToken.id == int(token))
    else:
        query = query.where(ApiToken.token_sha256 == hash_token(token))
    found = (await session.execute(query)).scalar_one_or_none()
    if found is not None:
        await session.delete(found)
        await session.flush()
    return found


_TOKEN_LOOKUP = (
    select(ApiToken.project_id, Project.name, ApiToken.scopes, ApiToken.expires_at)
    .join(Project, Project.id == ApiToken.project_id)
    .where(ApiToken.token_sha256 == bindparam("token_sha256"))
)


def authenticate(session: Session, token: str, *, now: datetime | None = None) -> Principal | None:
    """The principal for ``token``, or None when unknown or expired.

    Sync, for `Database.run_read`: every request runs it, and one thread hop
    with a statement built once costs a fraction of an async session's reads.
    """
    row = session.execute(_TOKEN_LOOKUP, {"token_sha256": hash_token(token)}).first()
    if row is None:
        return None
    project_id, project_name, scopes, expires_at = row
    if expires_at is not None and expires_at <= (now or utcnow()):
        return None
    return Principal(project_id, project_name, frozenset(scopes))
