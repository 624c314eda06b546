"""Concurrent jobs and requests on one key: never two entries, never two jobs.

Run on SQLite and on PostgreSQL: the two databases serialise writers very
differently (SQLite queues whole transactions, PostgreSQL lets two inserts of
one key meet at the unique index).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from aiohttp import web

from tests.conftest import DATABASE_BACKENDS
from tests.support.fault_origin import FaultOrigin, serve_fault_origin
from tests.support.images import png_bytes
from tests.support.service import RunningService, run_service

TIME_LIMIT = 30.0
PICTURE = png_bytes(16, 12)


@dataclass
class GateOrigin:
    """Holds every request for ``/gate.png`` until ``expected`` of them arrived, then answers all.

    So racing jobs download at the same time and reach the database together.
    """

    expected: int
    base_url: str = ""
    arrived: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.opened.set()
        try:
            await asyncio.wait_for(self.opened.wait(), timeout=10)
        except TimeoutError:
            return web.Response(status=504, text=f"only {self.arrived} of {self.expected} arrived\n")
        return web.Response(body=PICTURE, content_type="image/png")


async def serve_gate(gate: GateOrigin) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/gate.png", gate.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gate.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture(params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite under the service's data folder) or a fresh PostgreSQL database."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None


@pytest.fixture
async def service(database_url: str | None, tmp_path: Path) -> AsyncIterator[RunningService]:
    # No retry may hide a lost race: a failed download stays failed.
    async with run_service(tmp_path / "var", database_url=database_url, fetch_max_attempts=1) as running:
        yield running


@pytest.fixture
async def origin() -> AsyncIterator[FaultOrigin]:
    async with serve_fault_origin("127.0.0.1") as running:
        yield running


async def entries_for(service: RunningService, system_name: str, external_id: str) -> list[dict[str, Any]]:
    response = await service.client.get(
        "/api/v1/mediaLibrary",
        params={"systemName": system_name, "externalId": external_id},
        headers=service.tenant.headers,
    )
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["mediaLibraryEntries"]
    return entries


@pytest.mark.parametrize("metadata_differs", [False, True], ids=["same-file", "changed-metadata"])
async def test_jobs_racing_on_one_key_make_one_entry(service: RunningService, metadata_differs: bool) -> None:
    jobs = 3
    gate = GateOrigin(expected=jobs)
    runner = await serve_gate(gate)
    try:
        titles = [f"take {n}" if metadata_differs else "the title" for n in range(jobs)]
        job_ids = []
        for title in titles:
            response = await service.post_import(
                {
                    "systemName": "race",
                    "files": [
                        {
                            "url": f"{gate.base_url}/gate.png",
                            "id": "shared",
                            "fileName": "shared",
                            "metadata": {"title": title},
                        }
                    ],
                }
            )
            assert response.status_code == 200, response.text
            job_ids.append(response.json()["id"])
        with anyio.fail_after(TIME_LIMIT):
            statuses = [await service.wait_finished(job_id, TIME_LIMIT) for job_id in job_ids]
    finally:
        await runner.cleanup()

    assert gate.arrived == jobs  # every job downloaded, all at once
    results = [status["files"][0] for status in statuses]
    assert [s["state"] for s in statuses] == ["success"] * jobs
    assert len({r["mediaId"] for r in results}) == 1, results
    outcomes = sorted(r["status"] for r in results)
    if metadata_differs:
        # One created the entry, the others updated it in place.
        assert outcomes == ["success"] * jobs, results
    else:
        assert outcomes == ["skipped"] * (jobs - 1) + ["success"], results
        assert all(r["reason"] == "already exists" for r in results if r["status"] == "skipped")

    entries = await entries_for(service, "race", "shared")
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["id"] == results[0]["mediaId"]
    assert entry["version"] == (jobs if metadata_differs else 1)
    assert entry["metadata"]["title"] in titles
    assert entry["asset"]["sha256"] == hashlib.sha256(PICTURE).hexdigest()


async def test_concurrent_posts_with_one_idempotency_key_make_one_job(
    service: RunningService, origin: FaultOrigin
) -> None:
    body = {
        "systemName": "idempotent",
        "files": [{"url": origin.url("/ok?size=2222"), "id": "only", "fileName": "only", "metadata": {}}],
    }
    responses: list[httpx2.Response] = []

    async def post() -> None:
        responses.append(await service.post_import(body, headers={"Idempotency-Key": "retry-me-0001"}))

    with anyio.fail_after(TIME_LIMIT):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(post)
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    job_ids = {r.json()["id"] for r in responses}
    assert len(job_ids) == 1, job_ids

    status = await service.wait_finished(job_ids.pop(), TIME_LIMIT)
    assert [f["status"] for f in status["files"]] == ["success"]
    entries = await entries_for(service, "idempotent", "only")
    assert len(entries) == 1
    assert origin.hits["/ok"] == 1
