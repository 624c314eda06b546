"""The running service honours its own OpenAPI document (schemathesis).

Every operation of ``/openapi.json`` is fed generated requests, valid and
invalid, with a valid bearer token: no response may be a 5xx, and every
response must have a documented status code and content type, documented
headers, and a body matching the documented schema.

The worker is off, so the file URLs in generated batches are stored but never
fetched, and no request leaves 127.0.0.1.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import hypothesis
import pytest
import schemathesis
from anyio.from_thread import start_blocking_portal

from fileimport.app import create_app
from fileimport.core.settings import Settings
from tests.conftest import DATABASE_BACKENDS
from tests.support.postgres import PostgresServer
from tests.support.service import RunningService, run_service

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 50
SEED = 20261130
WORKFLOWS = 25
WORKFLOW_STEPS = 6


def _service_openapi() -> dict[str, Any]:
    """The document ``/openapi.json`` serves (test_served_document_is_the_tested_one checks it).

    Built in-process at import time because schemathesis makes one test per
    operation while collecting; its lazy ``from_fixture`` loader does not work
    with pytest 9.2 (it sets ``Function._nodeid``, which pytest no longer has).
    """
    document: dict[str, Any] = create_app(Settings(), run_worker=False).openapi()
    return document


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # Unknown query parameters are ignored, as most HTTP APIs do (`?_=<cache buster>`).
            "allow-extra-parameters": False,
        },
        # Valid by the schema is not always valid here: metadata fields come from the project's
        # configuration, ids must be unique within a batch, a URL needs a resolvable host form,
        # and the media library wants systemName with externalId, or ids. JSON Schema states none
        # of these, so schema-valid requests may rightly get a 400.
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }
)
DOCUMENT = _service_openapi()
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def live_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The service on its own event loop in a thread, so the synchronous checks can call it.

    On SQLite and on PostgreSQL, which refuses text SQLite stores (U+0000).
    """
    data_dir: Path = tmp_path_factory.mktemp("contract") / "var"
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgres":
            server: PostgresServer = request.getfixturevalue("postgres_server")
            database_url = stack.enter_context(server.fresh_database())
        portal = stack.enter_context(start_blocking_portal(backend="asyncio"))
        yield stack.enter_context(
            portal.wrap_async_context_manager(
                run_service(data_dir, database_url=database_url, run_worker=False)
            )
        )


def test_served_document_is_the_tested_one(live_service: RunningService) -> None:
    served = httpx2.get(f"{live_service.base_url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


@schema.parametrize()
def test_operation_conforms(case: schemathesis.Case, live_service: RunningService) -> None:
    case.call_and_validate(base_url=live_service.base_url, headers=live_service.tenant.headers, timeout=10)


def test_workflows(live_service: RunningService) -> None:
    """Chains along the document's links: a created job's id fed to the status operation."""
    answered: set[tuple[str, int]] = set()

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": live_service.base_url, "headers": live_service.tenant.headers, "timeout": 10}

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
            answered.add((case.operation.label, response.status_code))

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=WORKFLOWS,
            stateful_step_count=WORKFLOW_STEPS,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
    # Not only errors were checked: a job was created and its status read and validated.
    assert ("POST /api/v1/import/files", 200) in answered
    assert ("GET /api/v1/import/files/status", 200) in answered
