"""The FastAPI application: routes, error shape, OpenAPI, and (optionally) a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fileimport import __version__
from fileimport.core import ops
from fileimport.core.dispatch import Topic
from fileimport.core.errors import install_error_handlers
from fileimport.core.runtime import open_runtime
from fileimport.core.settings import Settings, get_settings
from fileimport.imports import routes as import_routes
from fileimport.imports.schemas import ImportRequest
from fileimport.media import routes as media_routes
from fileimport.worker import Worker


def create_app(
    settings: Settings | None = None,
    *,
    run_worker: bool = True,
    wake_children: Callable[[Topic], None] | None = None,
) -> FastAPI:
    """The ASGI app; with ``run_worker`` the process also imports files and delivers webhooks.

    ``wake_children`` wakes the worker processes started beside it when a job comes in.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = open_runtime(settings, wake_children)
        app.state.runtime = runtime
        try:
            if run_worker:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(Worker(runtime).run)
                    yield
                    tg.cancel_scope.cancel()
            else:
                yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="fileimport",
        version=__version__,
        description="Asynchronous file import into a media library; Livingdocs Public API compatible.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(import_routes.router)
    app.include_router(media_routes.router)
    app.include_router(media_routes.assets_router)
    app.include_router(ops.router)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """OpenAPI with the import body documented (the route reads the raw body itself).

    Error responses come from the routes (``error_responses``, the reference's
    shape); FastAPI's own 422 ``HTTPValidationError`` is dropped because this
    service answers invalid parameters with 400 in that shape.
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    request_schema = ImportRequest.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    request_schema["properties"]["files"]["maxItems"] = settings.max_batch_files
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schema.pop("$defs", {}))
    components["ImportRequest"] = request_schema
    operation = schema["paths"]["/api/v1/import/files"]["post"]
    operation.pop("x-request-model", None)
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportRequest"}}},
    }
    for path in schema["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _not_null(parameter["schema"])
            responses = operation.get("responses", {})
            if _is_fastapi_validation_error(responses.get("422")):
                del responses["422"]
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def _is_fastapi_validation_error(response: dict[str, Any] | None) -> bool:
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``str | None`` parameters as plain optional strings: a query or header value is never null."""
    variants = schema.get("anyOf")
    if not variants:
        return schema
    kept = [v for v in variants if v != {"type": "null"}]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest}
