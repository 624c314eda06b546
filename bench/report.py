"""The table ``make bench`` prints, and the goals it checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MB = 1_000_000


@dataclass(frozen=True)
class Goal:
    key: str
    text: str
    check: Callable[[dict[str, Any]], bool | None]


def _get(results: dict[str, Any], case: str, key: str) -> Any:
    found = results.get(case) or {}
    return None if "error" in found else found.get(key)


def _at_least(value: Any, floor: float) -> bool | None:
    return None if value is None else value >= floor


def _below(value: Any, ceiling: float) -> bool | None:
    return None if value is None else value < ceiling


GOALS = [
    Goal(
        "a",
        "(a) >= 1,000 files/s, POST to finished status",
        lambda r: _at_least(_get(r, "a", "service_files_per_s"), 1000),
    ),
    Goal("b", "(b) >= 70% of curl's MB/s", lambda r: _at_least(_get(r, "b", "ratio"), 0.70)),
    Goal("c", "(c) >= 70% of curl's MB/s", lambda r: _at_least(_get(r, "c", "ratio"), 0.70)),
    Goal(
        "c_rss",
        "(c) peak RSS < 150 MB (worst run)",
        lambda r: _below(_get(r, "c", "peak_rss_max_bytes"), 150 * MB),
    ),
    Goal("d_post", "(d) POST p50 < 100 ms", lambda r: _below(_get(r, "d_post", "p50_ms"), 100)),
    Goal("d_status", "(d) status p50 < 50 ms", lambda r: _below(_get(r, "d_status", "p50_ms"), 50)),
]


def goal_status(results: dict[str, Any]) -> dict[str, str]:
    status = {}
    for goal in GOALS:
        met = goal.check(results)
        status[goal.key] = "n/a" if met is None else ("PASS" if met else "FAIL")
    return status


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _throughput(case: dict[str, Any] | None, unit: str, digits: int) -> str:
    if not case:
        return "not run"
    if "error" in case:
        return "ERROR (see JSON)"
    key = "files_per_s" if unit == "files/s" else "mb_per_s"
    service, curl = case[f"service_{key}"], case[f"curl_{key}"]
    failed = f"  [{case['failed']} FAILED]" if case.get("failed") else ""
    return f"{_num(service, digits)} vs curl {_num(curl, digits)} = {case['ratio']:.0%}{failed}"


def _latency(case: dict[str, Any] | None) -> str:
    if not case:
        return "not run"
    if "error" in case:
        return "ERROR (see JSON)"
    return f"p50 {_num(case['p50_ms'], 1)} / p99 {_num(case['p99_ms'], 1)}"


def _rss(case: dict[str, Any] | None) -> str:
    if not case:
        return "not run"
    if "error" in case:
        return "ERROR (see JSON)"
    return (
        f"{_num(case['peak_rss_bytes'] / MB)} (worst {_num(case['peak_rss_max_bytes'] / MB)}, "
        f"idle {_num(case['idle_rss_bytes'] / MB)})"
    )


def _binary(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def table(columns: dict[str, tuple[str, dict[str, Any]]], info: dict[str, Any]) -> str:
    """Rows are the figures; one column per backend (label, results)."""
    a_files = info.get("a_files", 1000)
    b_files, b_mb = info.get("b_files", 0), info.get("b_bytes", 0) / MB
    c_bytes = info.get("c_bytes", 0)
    c_mb = c_bytes / MB
    rows: list[tuple[str, Callable[[dict[str, Any]], str], str | None]] = [
        (f"(a) {a_files} icons, files/s", lambda r: _throughput(r.get("a"), "files/s", 0), "a"),
        (f"(b) {b_files} images ({b_mb:.1f} MB), MB/s", lambda r: _throughput(r.get("b"), "MB/s", 1), "b"),
        (
            f"(c) one {_binary(c_bytes)} file ({c_mb:,.0f} MB), MB/s",
            lambda r: _throughput(r.get("c"), "MB/s", 0),
            "c",
        ),
        ("(c) service peak RSS, MB", lambda r: _rss(r.get("c")), "c_rss"),
        (f"(d) POST {a_files} files, ms", lambda r: _latency(r.get("d_post")), "d_post"),
        (f"(d) status, finished {a_files}-file job, ms", lambda r: _latency(r.get("d_status")), "d_status"),
    ]
    header = ["case", *[label for label, _ in columns.values()]]
    body = []
    for title, cell, goal_key in rows:
        line = [title]
        for _, results in columns.values():
            text = cell(results)
            if goal_key:
                text = f"{text}  {goal_status(results)[goal_key]}"
            line.append(text)
        body.append(line)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    rule = "-+-".join("-" * w for w in widths)
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    out.append("")
    out.append("goals: " + "; ".join(g.text for g in GOALS))
    return "\n".join(out)
