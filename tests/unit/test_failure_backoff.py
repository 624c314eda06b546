"""A worker loop that keeps failing logs one traceback, then one line per failure, and waits longer."""

from __future__ import annotations

from structlog.testing import capture_logs

from fileimport.worker import FailureBackoff


def fail(backoff: FailureBackoff, message: str) -> None:
    try:
        raise ConnectionRefusedError(message)
    except ConnectionRefusedError:
        backoff.failed()


def test_failures_log_once_in_full_then_in_one_line_and_back_off_to_the_cap() -> None:
    backoff = FailureBackoff("worker.claim_failed", max_wait=30.0)
    assert backoff.wait(0.25) == 0.25
    with capture_logs() as logs:
        for n in range(10):
            fail(backoff, f"down {n}")
    assert [entry.get("exc_info", False) for entry in logs] == [True] + [False] * 9
    assert logs[1]["error"] == "ConnectionRefusedError: down 1"
    assert logs[1]["failures"] == 2
    assert backoff.wait(0.25) == 30.0  # 0.25 * 2**10, capped

    with capture_logs() as logs:
        backoff.succeeded()
        backoff.succeeded()
    assert [entry["event"] for entry in logs] == ["worker.claim_failed.recovered"]
    assert backoff.wait(0.25) == 0.25


def test_the_wait_doubles_with_each_failure_in_a_row() -> None:
    backoff = FailureBackoff("webhook.loop_failed")
    waits = []
    with capture_logs():
        for n in range(4):
            fail(backoff, str(n))
            waits.append(backoff.wait(0.25))
    assert waits == [0.5, 1.0, 2.0, 4.0]
