"""HTTP routes of the import API (reference: "Import Files", "Check Import Status for Files")."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from sqlalchemy.exc import IntegrityError

from fileimport.auth.dependencies import get_runtime, require_scope
from fileimport.auth.service import SCOPE_WRITE, Principal
from fileimport.core.dispatch import Topic
from fileimport.core.errors import (
    NUL_FREE_PATTERN,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    error_responses,
    reject_repeated_query_parameters,
)
from fileimport.core.runtime import Runtime
from fileimport.imports import service
from fileimport.imports.schemas import JobCreated, JobStatus
from fileimport.projects.models import Project
from fileimport.projects.service import project_config

router = APIRouter(prefix="/api/v1/import/files", tags=["import"], responses=error_responses(400, 401, 403))

MAX_IDEMPOTENCY_KEY = 255
# Python's own limit for int() of a decimal string (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300
# Visible ASCII and space: the key is a Structured Field string (draft-ietf-httpapi-idempotency-key-header).
IDEMPOTENCY_KEY_PATTERN = "^[\\x20-\\x7E]+$"


async def _read_json_body(request: Request, max_bytes: int) -> tuple[bytes, Any]:
    """The body's bytes and decoded JSON.

    Raises UnsupportedMediaType unless the Content-Type is ``application/json``
    (charset absent or UTF-8, RFC 8259 §8.1), PayloadTooLarge beyond
    ``max_bytes`` (declared or received), and ValidationFailed for anything
    that is not strict UTF-8 JSON: ``NaN``, ``Infinity``, numbers out of range,
    an object naming a key twice (RFC 8259 §4: the meaning is unpredictable)
    and nesting too deep to parse included.
    """
    _check_content_type(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
        raise PayloadTooLarge({"body": f"must be at most {max_bytes} bytes"})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge({"body": f"must be at most {max_bytes} bytes"})
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed({"body": f"is not valid UTF-8: {exc.reason} at byte {exc.start}"}) from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except ValueError as exc:  # syntax, repeated keys, numbers beyond range (NaN, 1e999, 4300+ digits)
        raise ValidationFailed({"body": f"is not valid JSON: {exc}"}) from None
    except RecursionError:
        raise ValidationFailed({"body": "is not valid JSON: nested too deeply"}) from None
    return bytes(body), data


def _check_content_type(header: str) -> None:
    media_type, _, parameters = header.partition(";")
    if media_type.strip().lower() != "application/json":
        raise UnsupportedMediaType({"Content-Type": "must be application/json"})
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType({"Content-Type": "charset must be utf-8 (RFC 8259 §8.1)"})


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {json.dumps(key)} appears twice in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits is out of range (at most {MAX_INT_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


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
        **error_responses(413, 415, 422),
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
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Retry-safe POST key (24 h): the same key and body answer with the first job's id.",
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
    async with runtime.db.reader() as session:
        return await service.get_job_status(session, principal, id)
