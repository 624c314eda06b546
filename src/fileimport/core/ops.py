"""Operational routes: liveness, readiness, Prometheus metrics.

``/healthz`` and ``/readyz`` answer HEAD as they answer GET (RFC 9110 §9.3.2:
the same status and headers, no body), for load balancers and probes that
check with HEAD.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from fileimport.auth.dependencies import get_runtime
from fileimport.core.errors import NotReady, error_responses
from fileimport.core.http import add_get_and_head_route
from fileimport.core.runtime import Runtime
from fileimport.core.schema import schema_problem
from fileimport.core.storage import StorageError, StorageNotWritableError

router = APIRouter(tags=["operations"])


async def healthz() -> dict[str, str]:
    """200 ``{"status": "ok"}`` while the process serves requests."""
    return {"status": "ok"}


async def readyz(runtime: Annotated[Runtime, Depends(get_runtime)]) -> dict[str, str]:
    """200 ``{"status": "ready"}``, or NotReady (503) naming ``database`` and/or ``storage``."""
    problems: dict[str, str] = {}
    try:
        schema = await runtime.db.run_read(schema_problem)
    except Exception as exc:
        schema = f"unreachable: {type(exc).__name__}"
    if schema is not None:
        problems["database"] = schema
    try:
        await runtime.storage.check()
    except StorageNotWritableError as exc:
        problems["storage"] = runtime.storage.without_root(str(exc))  # /readyz is often open to all
    except StorageError as exc:
        problems["storage"] = "unreachable: " + runtime.storage.without_root(str(exc))
    except Exception as exc:
        problems["storage"] = f"unreachable: {type(exc).__name__}"
    if problems:
        raise NotReady(problems)
    return {"status": "ready"}


add_get_and_head_route(router, "/healthz", healthz, operation="Healthz", summary="The process is alive")
add_get_and_head_route(
    router,
    "/readyz",
    readyz,
    operation="Readyz",
    summary="Database and storage are reachable",
    responses=error_responses(503),
)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics() -> Response:
    """The Prometheus text format; in multiprocess mode (``serve --worker-processes``, see
    ``cli._share_metrics_with_children``) summed over this process and its worker processes."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # registers itself
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
