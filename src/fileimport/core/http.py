"""Strict reading of HTTP requests, shared by the API's routes.

``read_json_body`` reads a JSON request body as RFC 8259 defines it, and
nothing looser; ``reject_repeated_query_parameters`` is a dependency that
refuses a query parameter given twice. Both raise ``ApiError`` subclasses,
which ``core.errors`` turns into the reference's error shape.
``add_get_and_head_route`` registers an endpoint that answers both methods.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from fileimport.core.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed

# Python's own limit for int() of a decimal string (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300


async def read_json_body(request: Request, max_bytes: int) -> tuple[bytes, Any]:
    """The body's bytes and decoded JSON.

    Raises UnsupportedMediaType unless the Content-Type is ``application/json``
    (charset absent or UTF-8, RFC 8259 §8.1) and the body has no content
    coding (a gzip body, say: RFC 9110 §15.5.16 and RFC 7694), PayloadTooLarge beyond
    ``max_bytes`` (declared or received), and ValidationFailed for anything
    that is not strict UTF-8 JSON: ``NaN``, ``Infinity``, numbers out of range,
    an object naming a key twice (RFC 8259 §4: the meaning is unpredictable)
    and nesting too deep to parse included.
    """
    _check_content_type(request.headers.get("content-type", ""))
    codings = [c.strip().lower() for c in request.headers.get("content-encoding", "").split(",") if c.strip()]
    if any(c != "identity" for c in codings):
        raise UnsupportedMediaType(
            {"Content-Encoding": f"{', '.join(codings)} is not accepted; send the JSON uncompressed"},
            headers={"Accept-Encoding": "identity"},
        )
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


def reject_repeated_query_parameters(request: Request) -> None:
    """A dependency: 400 naming each query parameter given more than once (``?id=a&id=b``).

    Starlette would silently use the last value; for a job id or a lookup key
    that hides a client's bug. Declare it after the auth dependency so a
    request without a token still gets 401.
    """
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValidationFailed({name: "must be given once" for name in repeated})


def add_get_and_head_route(
    router: APIRouter,
    path: str,
    endpoint: Callable[..., Any],
    *,
    operation: str,
    summary: str,
    head_summary: str | None = None,
    **options: Any,
) -> None:
    """Register ``endpoint`` for GET and for HEAD (RFC 9110 §9.3.2) as two operations,
    ``get<operation>`` and ``head<operation>``, so that each has its own OpenAPI
    operationId; ``options`` go to ``APIRouter.add_api_route`` for both."""
    for method in ("GET", "HEAD"):
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            operation_id=f"{method.lower()}{operation}",
            summary=head_summary if method == "HEAD" and head_summary else summary,
            **options,
        )
