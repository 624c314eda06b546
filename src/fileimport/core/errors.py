"""Domain errors and their one mapping to the reference's error shape.

Every error body is ``{"status": 400, "error": "Bad Request",
"error_details": {...}}`` (Livingdocs Public API). Services raise
``ApiError`` subclasses; ``install_error_handlers`` turns them, FastAPI's own
validation errors and Starlette's HTTP errors into that shape, and anything
unexpected into a 500 without a stack trace.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)


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


class NotReady(ApiError):
    status_code = 503


def error_body(status_code: int, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference's error shape for ``status_code``."""
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Error"
    return {"status": status_code, "error": phrase, "error_details": details or {}}


def error_response(
    status_code: int, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status_code, details), status_code=status_code, headers=headers)


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
        details.setdefault(path, str(error.get("msg", "is invalid")))
    return details


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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http.unhandled_error", path=request.url.path)
        return error_response(500, {"message": "internal error; see the service log"})
