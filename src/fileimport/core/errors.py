"""Domain errors and their one mapping to the reference's error shape.

Every error body is ``{"status": 400, "error": "Bad Request",
"error_details": {...}}`` (Livingdocs Public API). Services raise
``ApiError`` subclasses; ``install_error_handlers`` turns them, FastAPI's own
validation errors and Starlette's HTTP errors into that shape, and anything
unexpected into a 500 without a stack trace. ``error_responses`` documents
the shape in OpenAPI.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fileimport.core.db import DATABASE_UNAVAILABLE
from fileimport.core.storage import StorageError

log = structlog.get_logger(__name__)

# PostgreSQL stores no U+0000 in text or jsonb, so no input string may hold one.
# As a JSON Schema ``pattern`` it documents the rule; ``validation_details`` words it.
NUL_FREE_PATTERN = "^[^\\u0000]*$"
NUL_MESSAGE = "must not contain NUL characters (U+0000)"
SURROGATE_MESSAGE = "must be valid Unicode text, without unpaired UTF-16 surrogates"


class ErrorBody(BaseModel):
    """The reference's error shape; ``error_details`` maps each field path to its problem."""

    status: int = Field(description="The HTTP status code.", examples=[400])
    error: str = Field(description="The status code's reason phrase.", examples=["Bad Request"])
    error_details: dict[str, Any] = Field(
        description="Problems keyed by the field they concern (`files.3.url`, `Idempotency-Key`), "
        "or `message`.",
        examples=[{"files.3.url": "must be an absolute http or https URL"}],
    )


_ERROR_DESCRIPTIONS = {
    400: "Invalid request: `error_details` names every problem by its field path",
    401: "Missing, invalid or expired bearer token",
    403: "The token lacks the operation's scope",
    404: "Not found in the token's project",
    413: "Request body larger than the configured limit",
    415: "Request body is not UTF-8 JSON",
    416: "Range outside the asset",
    422: "Idempotency-Key already used with a different request body",
    429: "Over the project's quota of files in unfinished jobs: retry after `Retry-After` seconds",
    503: "Database or storage unreachable",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer` challenge (RFC 6750)", "schema": {"type": "string"}}},
    416: {"Content-Range": {"description": "`bytes */<size>`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait (RFC 9110 §10.2.3)", "schema": {"type": "string"}}},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, each with the ErrorBody schema."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        response: dict[str, Any] = {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[code]}
        if code in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[code]
        responses[code] = response
    return responses


class ApiError(Exception):
    """An error with an HTTP status and ``error_details`` for the client."""

    status_code: int = 400

    def __init__(
        self, details: dict[str, Any] | str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        if isinstance(details, str):
            details = {"message": details}
        self.details: dict[str, Any] = details or {}
        self.headers = headers
        super().__init__(str(self.details))


class ValidationFailed(ApiError):
    """400: ``details`` maps each problem's path (``files.3.url``) to a sentence."""

    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Unprocessable(ApiError):
    status_code = 422


class UnsupportedMediaType(ApiError):
    status_code = 415


class PayloadTooLarge(ApiError):
    status_code = 413


class TooManyRequests(ApiError):
    """429 (RFC 6585 §4); ``retry_after`` seconds go to the ``Retry-After`` header."""

    status_code = 429

    def __init__(self, details: dict[str, Any], *, retry_after: int) -> None:
        super().__init__(details, headers={"Retry-After": str(retry_after)})


class NotReady(ApiError):
    status_code = 503


def error_body(status_code: int, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference's error shape for ``status_code``."""
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Error"
    return {"status": status_code, "error": phrase, "error_details": details or {}}


class ErrorJSONResponse(JSONResponse):
    """JSON that renders any str, even one holding an unpaired surrogate echoed from the input."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        # Inside a JSON string, a surrogate's backslash escape is the JSON escape of it.
        return text.encode("utf-8", "backslashreplace")


def error_response(
    status_code: int, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return ErrorJSONResponse(error_body(status_code, details), status_code=status_code, headers=headers)


def location_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("body", "files", 3, "url")`` → ``"files.3.url"``."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_details(errors: list[Any]) -> dict[str, str]:
    """Pydantic error dicts → ``{path: message}``, first message per path."""
    details: dict[str, str] = {}
    for error in errors:
        path = location_path(tuple(error.get("loc", ())))
        details.setdefault(path, validation_message(error))
    return details


def validation_message(error: dict[str, Any]) -> str:
    """A pydantic error as a short sentence about its field (``must be at most 255 characters``)."""
    kind = error.get("type")
    ctx = error.get("ctx") or {}
    match kind:
        case "missing":
            return "is required"
        case "string_type":
            return "must be a string"
        case "dict_type" | "model_type" | "model_attributes_type":
            return "must be an object"
        case "list_type":
            return "must be an array"
        case "string_unicode":
            return SURROGATE_MESSAGE
        case "string_too_short" if ctx.get("min_length") == 1:
            return "must not be empty"
        case "string_too_short":
            return f"must be at least {ctx.get('min_length')} characters"
        case "string_too_long":
            return f"must be at most {ctx.get('max_length')} characters"
        case "too_short":
            count = ctx.get("min_length")
            return f"must have at least {count} item{'' if count == 1 else 's'}"
        case "too_long":
            return f"must have at most {ctx.get('max_length')} items"
        case "string_pattern_mismatch" if ctx.get("pattern") == NUL_FREE_PATTERN:
            return NUL_MESSAGE
        case "string_pattern_mismatch":
            return f"must match the pattern {ctx.get('pattern')}"
        case "value_error":
            return str(ctx.get("error", error.get("msg", "is invalid")))
        case "extra_forbidden":
            return "is not a known field (names are case-sensitive)"
    return str(error.get("msg", "is invalid"))


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise to the reference's error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_details(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        details = {"message": exc.detail} if isinstance(exc.detail, str) else None
        return error_response(exc.status_code, details, dict(exc.headers or {}) or None)

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database is down or overloaded: not the client's fault, and
        # worth a retry (RFC 9110 §15.6.4).
        log.warning("http.database_unavailable", path=request.url.path, error=type(exc).__name__)
        return error_response(503, {"database": "unavailable; retry later"}, {"Retry-After": "5"})

    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)

    @app.exception_handler(StorageError)
    async def _storage_unavailable(request: Request, exc: StorageError) -> JSONResponse:
        # The blob store failed (unreachable, full, read-only, a broken mount):
        # as with the database, not the client's fault, and worth a retry. The
        # store's words stay in the log: they can name the server's paths.
        log.warning("http.storage_unavailable", path=request.url.path, error=str(exc))
        return error_response(503, {"storage": "unavailable; retry later"}, {"Retry-After": "30"})

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up while sending its body: nothing was done, and
        # nobody is there to read an answer. Not an error of the service.
        log.info("http.client_disconnected", path=request.url.path)
        return error_response(400, {"body": "the client closed the connection before sending all of it"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        return error_response(500, {"message": "internal error; see the service log"})
