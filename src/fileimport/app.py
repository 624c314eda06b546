"""The FastAPI application: routes, error shape, OpenAPI, and (optionally) a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fileimport import __version__
from fileimport.core import ops
from fileimport.core.errors import install_error_handlers
from fileimport.core.runtime import open_runtime
from fileimport.core.settings import Settings, get_settings
from fileimport.imports import routes as import_routes
from fileimport.imports.schemas import ImportRequest
from fileimport.media import routes as media_routes
from fileimport.worker import Worker


def create_app(settings: Settings | None = None, *, run_worker: bool = True) -> FastAPI:
    """The ASGI app; with ``run_worker`` the process also imports files and delivers webhooks."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = open_runtime(settings)
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
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI with the import body documented (the route reads the raw body itself)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    request_schema = ImportRequest.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schema.pop("$defs", {}))
    components["ImportRequest"] = request_schema
    operation = schema["paths"]["/api/v1/import/files"]["post"]
    operation.pop("x-request-model", None)
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportRequest"}}},
    }
    error = {
        "type": "object",
        "required": ["status", "error", "error_details"],
        "properties": {
            "status": {"type": "integer"},
            "error": {"type": "string"},
            "error_details": {"type": "object"},
        },
    }
    components["Error"] = error
    for path in schema["paths"].values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code, text in (
                ("400", "Bad request"),
                ("401", "Missing or invalid token"),
                ("403", "Missing scope"),
                ("404", "Not found"),
            ):
                responses.setdefault(
                    code,
                    {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    app.openapi_schema = schema
    return schema
