"""The import API's logic: validate a batch, store a job, report its status.

Validation is all-or-nothing (SPEC.md): every problem in the request is named
by its path and nothing is stored when there is any.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fileimport.auth.service import Principal
from fileimport.core.address_guard import AddressGuard, BlockedAddressError, parse_ip
from fileimport.core.db import new_id, utcnow
from fileimport.core.errors import (
    NUL_MESSAGE,
    SURROGATE_MESSAGE,
    NotFound,
    TooManyRequests,
    Unprocessable,
    ValidationFailed,
    validation_details,
)
from fileimport.imports import repository
from fileimport.imports.models import IdempotencyKey, ImportJob
from fileimport.imports.schemas import FileResult, ImportRequest, JobStatus, Progress, WebhookStatus
from fileimport.imports.states import FileStatus, JobState
from fileimport.projects.config import ProjectConfig
from fileimport.webhooks import repository as webhook_repository

# Deeper JSON than this is no metadata or webhook context a person wrote.
MAX_JSON_DEPTH = 32
DEPTH_MESSAGE = f"must not nest deeper than {MAX_JSON_DEPTH} levels"
# Seconds a client over its quota is asked to wait: long enough for workers to
# finish some jobs, short enough that a migration script keeps moving.
QUOTA_RETRY_AFTER_SECONDS = 60


def validate_import_request(data: Any, config: ProjectConfig, max_batch_files: int) -> ImportRequest:
    """Parse a decoded JSON body into an ImportRequest.

    Raises ValidationFailed whose details name every problem by path
    (``files.3.url``, ``files.7.metadata.title``): strings no database can
    store (NUL, unpaired surrogates) anywhere in the body, nesting deeper than
    ``MAX_JSON_DEPTH``, schema errors, more than ``max_batch_files`` files,
    duplicate ids, unknown media types and metadata that the media type does
    not accept.
    """
    text_problems = json_text_problems(data)
    if any(problem == DEPTH_MESSAGE for problem in text_problems.values()):
        raise ValidationFailed(text_problems)  # deep JSON would only exhaust the validators' recursion
    details: dict[str, str] = {}
    request: ImportRequest | None = None
    try:
        request = ImportRequest.model_validate(data)
    except ValidationError as exc:
        details.update(validation_details(list(exc.errors())))

    raw_files = data.get("files") if isinstance(data, dict) else None
    if isinstance(raw_files, list):
        if len(raw_files) > max_batch_files:
            details["files"] = f"must have at most {max_batch_files} items, has {len(raw_files)}"
        for path, problem in _batch_problems(raw_files, config).items():
            if _text_problem(path) is None:  # a key that cannot be stored is named by its object
                details[path] = problem
    details.update(text_problems)
    if details:
        raise ValidationFailed(dict(sorted(details.items(), key=lambda kv: _path_key(kv[0]))))
    assert request is not None  # noqa: S101 - no details means the model validated
    return request


def webhook_address_problem(url: str | None, guard: AddressGuard) -> str | None:
    """Why a job's ``webhook`` can never be delivered, when its host is an IP address that
    ``guard`` refuses (``10.0.0.5``, ``[::1]``, ``169.254.169.254``); None otherwise.

    Only literal addresses are checked here: a host name is resolved, and each
    of its addresses checked, at every delivery attempt, since what it
    resolves to may change (`fileimport.core.address_guard`).
    """
    host = urlsplit(url).hostname if url else None
    address = parse_ip(host) if host else None
    if address is None or guard.is_allowed_host(str(address)):
        return None
    try:
        guard.check_address(address)
    except BlockedAddressError as exc:
        return f"cannot be delivered: {exc}"
    return None


def json_text_problems(data: Any) -> dict[str, str]:
    """Problems that no schema catches, keyed by path: text PostgreSQL cannot store, and depth.

    Any string or object key holding U+0000 or an unpaired UTF-16 surrogate
    (JSON can escape either) is named: a value by its own path, a key by its
    object's path. Containers deeper than ``MAX_JSON_DEPTH`` are named once.
    """
    problems: dict[str, str] = {}
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        where = path or "body"
        if isinstance(value, str):
            if problem := _text_problem(value):
                problems.setdefault(where, problem)
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                problems.setdefault(where, DEPTH_MESSAGE)
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and (problem := _text_problem(key)):
                    problems.setdefault(where, f"keys {problem}")
                    continue
                # Joined below the root even when ``path`` is "": an object key may be empty.
                stack.append((f"{path}.{key}" if depth else str(key), item, depth + 1))
    return problems


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_MESSAGE
    if text.isascii():  # no surrogate, and no encoded copy to make (most of a body's strings)
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE_MESSAGE
    return None


def _path_key(path: str) -> tuple[Any, ...]:
    # List positions sort as numbers; a metadata key such as "¹" or "9" * 5000 sorts as text.
    return tuple(
        (0, int(p), "") if p.isascii() and p.isdigit() and len(p) < 10 else (1, 0, p) for p in path.split(".")
    )


def _batch_problems(raw_files: list[Any], config: ProjectConfig) -> dict[str, str]:
    problems: dict[str, str] = {}
    first_position: dict[str, int] = {}
    for index, raw in enumerate(raw_files):
        if not isinstance(raw, dict):
            continue
        external_id = raw.get("id")
        if isinstance(external_id, str):
            first = first_position.setdefault(external_id, index)
            if first != index:
                problems[f"files.{index}.id"] = f"'{external_id}' is already the id of files.{first}"
        metadata = raw.get("metadata")
        handle = raw.get("mediaType")
        if handle is not None and isinstance(handle, str):
            media_type = config.media_type(handle)
            if media_type is None:
                handles = ", ".join(m.handle for m in config.media_types)
                problems[f"files.{index}.mediaType"] = f"unknown media type '{handle}'; known: {handles}"
            elif isinstance(metadata, dict):
                for key, problem in media_type.metadata_problems(metadata).items():
                    problems[f"files.{index}.metadata.{key}"] = problem
        elif isinstance(metadata, dict):
            # The media type is chosen from the bytes later: refuse now only what no type takes.
            for key, value in metadata.items():
                if field_problem := config.metadata_problem_for_any_type(key, value):
                    problems[f"files.{index}.metadata.{key}"] = field_problem
    return problems


def request_fingerprint(body: bytes) -> str:
    """Hex SHA-256 of a request body, to tell a retried POST from a different one."""
    return hashlib.sha256(body).hexdigest()


async def find_idempotent_job(
    session: AsyncSession, principal: Principal, key: str, fingerprint: str, ttl: timedelta
) -> str | None:
    """The job created earlier with ``key`` and the same body, or None.

    Raises Unprocessable when the key was used with a different body
    (IETF draft "The Idempotency-Key HTTP Header Field", §2.7). Expired keys
    are deleted.
    """
    stored = await repository.get_idempotency_key(session, principal.project_id, key)
    if stored is None:
        return None
    if stored.created_at + ttl < utcnow():
        await repository.delete_idempotency_key(session, stored.id)
        await session.flush()
        return None
    if stored.request_sha256 != fingerprint:
        raise Unprocessable({"Idempotency-Key": "was already used with a different request body"})
    return stored.job_id


async def check_project_quota(session: AsyncSession, project_id: int, batch_files: int, limit: int) -> None:
    """Refuse a batch that would take the project over ``limit`` files in unfinished jobs.

    The quota (``FILEIMPORT_PROJECT_MAX_PENDING_FILES``, SPEC.md "Errors")
    bounds a project's backlog: every file of each of its jobs still
    ``started`` counts until that job finishes. Raises ValidationFailed
    (400, ``files``) when the batch alone is over ``limit``, as no retry can
    help, and TooManyRequests (429, ``Retry-After``: QUOTA_RETRY_AFTER_SECONDS)
    when the files already waiting plus ``batch_files`` are; its details name
    the ``limit`` and the ``pending`` count. One query that sums
    ``import_jobs.total_files`` over the started jobs (found through the
    index on ``state``), so its cost grows with the number of unfinished
    jobs, not of files. Checked when a job is posted: concurrent posts can
    pass the limit by at most their own batches.
    """
    if batch_files > limit:
        raise ValidationFailed(
            {
                "files": f"must have at most {limit} items: the project's quota of files in unfinished "
                f"jobs (FILEIMPORT_PROJECT_MAX_PENDING_FILES), has {batch_files}"
            }
        )
    pending = await repository.count_files_in_unfinished_jobs(session, project_id)
    if pending + batch_files > limit:
        raise TooManyRequests(
            {
                "files": f"the project has {pending} files in unfinished jobs and a quota of {limit} "
                f"(FILEIMPORT_PROJECT_MAX_PENDING_FILES); this batch of {batch_files} would exceed it: "
                "retry once some jobs have finished",
                "limit": limit,
                "pending": pending,
            },
            retry_after=QUOTA_RETRY_AFTER_SECONDS,
        )


async def create_job(
    session: AsyncSession,
    principal: Principal,
    request: ImportRequest,
    *,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> str:
    """Store the job and its files (flush only); returns the job id."""
    job = ImportJob(
        id=new_id("j", 9),
        project_id=principal.project_id,
        system_name=request.system_name,
        webhook_url=request.webhook,
        context=request.context,
        state=JobState.STARTED,
        total_files=len(request.files),
        started_at=utcnow(),
    )
    session.add(job)
    await session.flush()
    await repository.insert_files(
        session,
        [
            {
                "job_id": job.id,
                "position": position,
                "external_id": spec.id,
                "url": spec.url,
                "file_name": spec.file_name,
                "metadata": spec.metadata,
                "media_type": spec.media_type,
                "status": FileStatus.PENDING,
                "attempts": 0,
            }
            for position, spec in enumerate(request.files)
        ],
    )
    if idempotency_key:
        session.add(
            IdempotencyKey(
                project_id=principal.project_id,
                key=idempotency_key,
                request_sha256=fingerprint,
                job_id=job.id,
            )
        )
        await session.flush()
    return job.id


def get_job_status(session: Session, principal: Principal, job_id: str) -> JobStatus:
    """The status document of a job of the caller's project; raises NotFound. Sync: one
    `Database.run_read` (a thread hop, not one per statement)."""
    job = repository.get_job(session, job_id, principal.project_id)
    if job is None:
        raise NotFound({"id": f"no import job '{job_id}'"})
    counts = repository.count_files_by_status(session, job.id)
    finished = job.state is not JobState.STARTED
    files = None
    if finished:
        files = [
            FileResult(
                status=f.status,
                state=f.status,
                system_name=job.system_name,
                external_id=f.external_id,
                media_id=f.media_id,
                reason=f.reason,
                code=f.code,
            )
            for f in repository.list_file_results(session, job.id)
        ]
    webhook = None
    if job.webhook_url:
        delivery = webhook_repository.get_delivery_for_job(session, job.id)
        webhook = (
            WebhookStatus(
                state=delivery.state,
                attempts=delivery.attempts,
                last_error=delivery.last_error,
                last_status=delivery.last_status,
                next_attempt_at=delivery.next_attempt_at,
            )
            if delivery
            else WebhookStatus(state="waiting", attempts=0)
        )
    return JobStatus(
        finished=finished,
        state=JobState(job.state),
        id=job.id,
        system_name=job.system_name,
        started_at=job.started_at,
        finished_at=job.finished_at,
        reason=job.failure_reason,
        progress=Progress(
            total=job.total_files,
            pending=counts.get(FileStatus.PENDING, 0),
            success=counts.get(FileStatus.SUCCESS, 0),
            skipped=counts.get(FileStatus.SKIPPED, 0),
            failed=counts.get(FileStatus.FAILED, 0),
        ),
        files=files,
        webhook=webhook,
    )
