"""Summarise a trace of `bench/tracing/sitecustomize.py`, one line per job.

``python bench/tracing/timeline.py DIR [--calls]``: for each job (from one
``create_job`` to the next), milliseconds after ``create_job`` began at which
the first download began and the last ended, the last probe, durable store
and results transaction ended, and the webhook delivery ran; with
``--calls``, every traced call of the last job. A bench run also traces
``bench/fetcher_alone.py``'s downloads after each job; those are left out
(a job's downloads are the ones of its own processes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

Event = tuple[int, str, float, float]


def load(folder: Path) -> list[Event]:
    """Every traced call in ``folder``, by start time."""
    events: list[Event] = []
    for file in folder.glob("*.jsonl"):
        events.extend(tuple(json.loads(line)) for line in file.read_text().splitlines() if line)  # type: ignore[misc]
    return sorted(events, key=lambda e: e[2])


def jobs(events: list[Event]) -> list[list[Event]]:
    """The calls of each job: from its ``create_job`` to the next, in the processes that served it."""
    starts = [i for i, e in enumerate(events) if e[1] == "create_job"]
    service = {e[0] for e in events if e[1] in ("create_job", "FileImporter._download")}
    return [
        [e for e in events[i : (starts[k + 1] if k + 1 < len(starts) else len(events))] if e[0] in service]
        for k, i in enumerate(starts)
    ]


def summary(job: list[Event]) -> str:
    """One line: the stages' times in ms after the job's ``create_job`` began."""
    t0 = job[0][2]

    def ms(value: float) -> str:
        return f"{1000 * (value - t0):.1f}"

    def span(stage: str) -> list[Event]:
        return [e for e in job if e[1] == stage]

    downloads, webhooks = span("OriginFetcher.fetch"), span("deliver_due_webhooks")
    parts = [f"{len(downloads)} downloads"]
    if downloads:
        parts.append(
            f"first began {ms(min(e[2] for e in downloads))}, last ended {ms(max(e[3] for e in downloads))}"
        )
    for stage, label in (
        ("FileImporter._inspect", "last probe"),
        ("FileImporter._store", "last store"),
        ("ResultRecorder._write", "last results transaction"),
    ):
        calls = span(stage)
        if calls:
            parts.append(f"{label} {ms(max(e[3] for e in calls))}")
    if webhooks:
        parts.append(f"webhook {ms(webhooks[0][2])}-{ms(webhooks[0][3])}")
    return "; ".join(parts)


def main() -> None:
    folder = Path(sys.argv[1])
    found = jobs(load(folder))
    for n, job in enumerate(found):
        print(f"job {n}: {summary(job)}")
    if "--calls" in sys.argv and found:
        t0 = found[-1][0][2]
        for pid, stage, start, end in found[-1]:
            print(
                f"{pid:>8} {stage:32} {1000 * (start - t0):8.1f} {1000 * (end - t0):8.1f} {1000 * (end - start):7.1f}"
            )


if __name__ == "__main__":
    main()
