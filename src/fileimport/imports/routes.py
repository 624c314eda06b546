"""HTTP routes of the import API (reference: "Import Files", "Check Import Status for Files")."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from sqlalchemy.exc import IntegrityError

from fileimport.auth.dependencies import get_runtime, require_scope
from fileimport.auth.service import SCOPE_WRITE, Principal
from fileimport.core.address_guard import guard_from_settings
from fileimport.core.dispatch import Topic
from fileimport.core.errors import NUL_FREE_PATTERN, ValidationFailed, error_responses
from fileimport.core.http import read_json_body, reject_repeated_query_parameters
from fileimport.core.runtime import Runtime
from fileimport.imports import service
from fileimport.imports.schemas import JobCreated, JobStatus
from fileimport.projects.models import Project
from fileimport.projects.service import project_config

router = APIRouter(prefix="/api/v1/import/files", tags=["import"], responses=error_responses(400, 401, 403))

MAX_IDEMPOTENCY_KEY = 255
# Visible ASCII and space: the key is a Structured Field string (draft-ietf-httpapi-idempotency-key-header).
IDEMPOTENCY_KEY_PATTERN = "^[\\x21-\\x7E](?:[\\x20-\\x7E]*[\\x21-\\x7E])?$"
"""Printable ASCII, not starting or ending with a space. Spaces and tabs around
the header's value are not part of the key (RFC 9110 §5.5: a field value
excludes leading and trailing whitespace): they are removed before the check."""
_IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)


def _idempotency_key(request: Request, raw: str | None) -> str | None:
    """The header's key without surrounding whitespace; raises `ValidationFailed` naming the header
    (also when it is given twice: which one the client meant is a guess)."""
    if raw is None:
        return None
    if len(request.headers.getlist("Idempotency-Key")) > 1:
        raise ValidationFailed({"Idempotency-Key": "must be given once"})
    key = raw.strip(" \t")
    if not _IDEMPOTENCY_KEY_RE.match(key):
        raise ValidationFailed({"Idempotency-Key": "must be 1 to 255 printable ASCII characters"})
    return key


@router.post(
    "",
    response_model=JobCreated,
    operation_id="importFiles",
    summary="Import Files",
    description="Queue a batch of files to import; answers with the job id once it is stored.",
    responses={
        200: {
            "description": "The job is stored; files are downloaded afterwards",
            "links": {
                "GetImportFilesStatus": {
                    "operationId": "getImportFilesStatus",
                    "parameters": {"id": "$response.body#/id"},
                    "description": "The job's status",
                }
            },
        },
        **error_responses(413, 415, 422, 429),
    },
    openapi_extra={"x-request-model": "ImportRequest"},
)
async def import_files(
    request: Request,
    principal: Annotated[Principal, Depends(require_scope(SCOPE_WRITE))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            # Documented for clients; checked after surrounding whitespace is removed.
            json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN},
            description="Retry-safe POST key (24 h): the same key and body answer with the first job's id.",
        ),
    ] = None,
) -> JobCreated:
    settings = runtime.settings
    idempotency_key = _idempotency_key(request, idempotency_key)
    body, data = await read_json_body(request, int(settings.max_body_bytes))
    fingerprint = service.request_fingerprint(body)
    async with runtime.db.transaction() as session:
        project = await session.get(Project, principal.project_id)
        assert project is not None  # noqa: S101 - the token's project exists (FK)
        import_request = service.validate_import_request(
            data, project_config(project), settings.max_batch_files
        )
        if import_request.webhook is not None:
            problem = service.webhook_address_problem(
                str(import_request.webhook), guard_from_settings(settings)
            )
            if problem:
                raise ValidationFailed({"webhook": problem})
        if idempotency_key:
            earlier = await service.find_idempotent_job(
                session, principal, idempotency_key, fingerprint, settings.idempotency_ttl
            )
            if earlier:
                return JobCreated(id=earlier)
    try:
        async with runtime.db.transaction() as session:
            await service.check_project_quota(
                session, principal.project_id, len(import_request.files), settings.project_max_pending_files
            )
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
    runtime.dispatcher.wake_all(Topic.IMPORTS)
    return JobCreated(id=job_id)


@router.get(
    "/status",
    response_model=JobStatus,
    response_model_exclude_none=True,
    operation_id="getImportFilesStatus",
    summary="Check Import Status for Files",
    responses=error_responses(404),
)
async def import_status(
    principal: Annotated[Principal, Depends(require_scope(SCOPE_WRITE))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    _single: Annotated[None, Depends(reject_repeated_query_parameters)],
    id: Annotated[
        str,
        Query(min_length=1, max_length=64, pattern=NUL_FREE_PATTERN, description="The job id from the POST."),
    ],
) -> JobStatus:
    return await runtime.db.run_read(partial(service.get_job_status, principal=principal, job_id=id))
