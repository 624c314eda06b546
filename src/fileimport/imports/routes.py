"""HTTP routes of the import API (reference: "Import Files", "Check Import Status for Files")."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from sqlalchemy.exc import IntegrityError

from fileimport.auth.dependencies import get_runtime, require_scope
from fileimport.auth.service import SCOPE_WRITE, Principal
from fileimport.core.dispatch import Topic
from fileimport.core.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from fileimport.core.runtime import Runtime
from fileimport.imports import service
from fileimport.imports.schemas import JobCreated, JobStatus
from fileimport.projects.models import Project
from fileimport.projects.service import project_config

router = APIRouter(prefix="/api/v1/import/files", tags=["import"])

MAX_IDEMPOTENCY_KEY = 255


async def _read_json_body(request: Request, max_bytes: int) -> tuple[bytes, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaType({"Content-Type": "must be application/json"})
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge({"body": f"must be at most {max_bytes} bytes"})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge({"body": f"must be at most {max_bytes} bytes"})
    try:
        return bytes(body), json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed({"body": f"is not valid JSON: {exc}"}) from None


@router.post(
    "",
    response_model=JobCreated,
    summary="Import Files",
    description="Queue a batch of files to import; answers with the job id once it is stored.",
    openapi_extra={"x-request-model": "ImportRequest"},
)
async def import_files(
    request: Request,
    principal: Annotated[Principal, Depends(require_scope(SCOPE_WRITE))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY, description="Retry-safe POST key (24 h)."
        ),
    ] = None,
) -> JobCreated:
    settings = runtime.settings
    body, data = await _read_json_body(request, int(settings.max_body_bytes))
    fingerprint = service.request_fingerprint(body)
    async with runtime.db.transaction() as session:
        project = await session.get(Project, principal.project_id)
        assert project is not None  # noqa: S101 - the token's project exists (FK)
        import_request = service.validate_import_request(
            data, project_config(project), settings.max_batch_files
        )
        if idempotency_key:
            earlier = await service.find_idempotent_job(
                session, principal, idempotency_key, fingerprint, settings.idempotency_ttl
            )
            if earlier:
                return JobCreated(id=earlier)
    try:
        async with runtime.db.transaction() as session:
            job_id = await service.create_job(
                session, principal, import_request, idempotency_key=idempotency_key, fingerprint=fingerprint
            )
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the insert: answer with its job.
        async with runtime.db.transaction() as session:
            earlier = await service.find_idempotent_job(
                session, principal, idempotency_key, fingerprint, settings.idempotency_ttl
            )
        if earlier is None:
            raise
        return JobCreated(id=earlier)
    runtime.dispatcher.wake(Topic.IMPORTS)
    return JobCreated(id=job_id)


@router.get(
    "/status",
    response_model=JobStatus,
    response_model_exclude_none=True,
    summary="Check Import Status for Files",
)
async def import_status(
    principal: Annotated[Principal, Depends(require_scope(SCOPE_WRITE))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    id: Annotated[str, Query(min_length=1, max_length=64, description="The job id from the POST.")],
) -> JobStatus:
    async with runtime.db.sessionmaker() as session:
        return await service.get_job_status(session, principal, id)
