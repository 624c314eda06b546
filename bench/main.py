"""``make bench``: the service against a curl ceiling on a loopback nginx origin.

See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cases import BackendBench, CorpusFile, Settings, completion_text
from bench.ceiling import curl_version
from bench.origin import Unavailable, find_nginx, make_file, nginx_origin
from bench.report import GOALS, goal_status, table
from bench.service import (
    POSTGRES_ADMIN_URL,
    Backend,
    load_average,
    postgres_available,
    postgres_database,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus"
BIG_NAME = "big.bin"
LABELS = {"sqlite": "SQLite + local folder (embedded)", "postgresql": "PostgreSQL + local folder"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=int,
        default=int(os.environ.get("FILEIMPORT_BENCH_RUNS", "3")),
        help="runs per figure; each figure is their median (default 3; FILEIMPORT_BENCH_RUNS)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one run per figure (a smoke test of the harness)"
    )
    parser.add_argument("--cases", default="a,b,c,d", help="cases to run, comma separated (default a,b,c,d)")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="columns: sqlite, postgresql (default both)"
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        help="fileimport serve --worker-processes for (a), (b), (d): workers beside serve's own; "
        "the concurrency is split between the processes (default 1, one per core on this 2-core "
        "machine: case (a) on SQLite, alternating, 493-614 files/s with 1 against 391-446 with 0; "
        "PostgreSQL 482-513 against 345-468)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="service worker and per-origin concurrency, and curl --parallel-max (default 16)",
    )
    parser.add_argument(
        "--calls", type=int, default=50, help="calls per latency run, at least 50 (default 50)"
    )
    parser.add_argument(
        "--big-mib", type=int, default=1024, help="size of the generated file in MiB (default 1024)"
    )
    parser.add_argument(
        "--completion",
        choices=["webhook", "poll"],
        default="webhook",
        help="how the bench learns that a job finished: webhook (default: the job's signed webhook "
        "to a receiver in the bench, then one status GET) or poll (a status GET every --poll seconds)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.05,
        help="status poll interval in seconds with --completion poll (default 0.05)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a FILEIMPORT_* variable for every fileimport command the bench starts (repeatable), "
        "e.g. 'FILEIMPORT_STORAGE_OPTIONS={\"fsync\": false}'; overrides the bench's own values",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path(os.environ.get("FILEIMPORT_BENCH_CORPUS", DEFAULT_CORPUS)),
        help="the corpus folder (default ../shared/corpus; FILEIMPORT_BENCH_CORPUS)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("FILEIMPORT_BENCH_POSTGRES_URL", POSTGRES_ADMIN_URL),
        help="admin connection for creating the bench database (FILEIMPORT_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "latest.json", help="where to write the results"
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="a",
        metavar="CASES",
        help="also profile these cases (default a) on SQLite with py-spy; text under bench/results/",
    )
    parser.add_argument(
        "--profile-only", nargs="?", const="a", metavar="CASES", help="only profile these cases (default a)"
    )
    parser.add_argument(
        "--profile-backend",
        choices=sorted(LABELS),
        default="sqlite",
        help="the backend to profile on (default sqlite)",
    )
    parser.add_argument(
        "--at",
        metavar="REV",
        help="measure the committed src/ of git revision REV (e.g. HEAD) instead of the work tree",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (service logs, data)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.calls < 50:
        parser.error("--calls must be at least 50 (p99 needs them)")
    args.service_env = parse_service_env(parser, args.service_env)
    return args


# The bench gives every run a fresh data folder and database of its own.
BENCH_OWNED_ENV = ("FILEIMPORT_DATA_DIR", "FILEIMPORT_DATABASE_URL")


def parse_service_env(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--service-env KEY=VALUE`` options as a dict; only FILEIMPORT_* keys, not those the bench owns."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--service-env {item!r}: expected KEY=VALUE")
        if not key.startswith("FILEIMPORT_"):
            parser.error(
                f"--service-env {item!r}: {key} does not start with FILEIMPORT_; the option only "
                "passes the service's own settings (FILEIMPORT_*)"
            )
        if key in BENCH_OWNED_ENV:
            parser.error(f"--service-env {item!r}: the bench sets {key} itself (a fresh one per run)")
        env[key] = value
    return env


def load_corpus(corpus: Path) -> tuple[list[CorpusFile], list[CorpusFile]]:
    """Icons and images from the corpus manifest; raises Unavailable when the corpus is missing."""
    manifest = corpus / "MANIFEST.json"
    if not manifest.is_file():
        raise Unavailable(
            f"the corpus is missing: no {manifest} (expected ../shared/corpus beside the project)"
        )
    entries = json.loads(manifest.read_text())["files"]
    files = [CorpusFile(e["path"], int(e["bytes"])) for e in entries if (corpus / e["path"]).is_file()]
    icons = sorted((f for f in files if f.path.startswith("icons/")), key=lambda f: f.path)
    images = sorted((f for f in files if f.path.startswith("images/")), key=lambda f: f.path)
    if not icons or not images:
        raise Unavailable(f"the corpus at {corpus} has no icons/ or images/ files listed in MANIFEST.json")
    return icons, images


def export_source(rev: str, workdir: Path) -> tuple[Path, str]:
    """``src/fileimport`` of ``rev`` extracted under ``workdir``; returns the folder for PYTHONPATH and the commit."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = workdir / f"src-{commit}"
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src/fileimport"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src", commit


def machine_info() -> dict[str, Any]:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "load_average_at_start": load_average(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
        "src_uncommitted_changes": bool(dirty),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def skip(reason: str, path: Path) -> int:
    print(f"bench SKIPPED: {reason}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"skipped": reason, "date": datetime.now(UTC).isoformat()}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    try:
        icons, images = load_corpus(args.corpus)
        nginx = find_nginx(install=True)
        curl = curl_version()
        if curl is None:
            raise Unavailable("curl is not installed (apt-get install -y curl)")
    except Unavailable as exc:
        return skip(str(exc), args.json)

    cases = frozenset(c.strip() for c in args.cases.split(",") if c.strip())
    backends = []
    for key in (b.strip() for b in args.backends.split(",") if b.strip()):
        if key not in LABELS:
            print(f"unknown backend {key!r}; known: {', '.join(LABELS)}", file=sys.stderr)
            return 2
        backends.append(key)
    info = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="fileimport-bench-"))
    workdir.chmod(0o755)
    source = None
    if args.at:
        source, commit = export_source(args.at, workdir)
        info.update(commit=commit, src_uncommitted_changes=False, measured=f"git {args.at} = {commit}")
    else:
        dirty = " + uncommitted changes" if info["src_uncommitted_changes"] else ""
        info["measured"] = f"work tree (commit {info['commit']}{dirty})"
    print(
        f"fileimport bench: {info['cores']} cores ({info['cpu']}), {info['memory_bytes'] / 2**30:.1f} GiB, "
        f"commit {info['commit']}{' + uncommitted src changes' if info['src_uncommitted_changes'] else ''}; "
        f"median of {args.runs} run(s); working in {workdir}",
        flush=True,
    )
    settings = Settings(
        runs=args.runs,
        concurrency=args.concurrency,
        worker_processes=args.worker_processes,
        calls=args.calls,
        poll=args.poll,
        completion=args.completion,
        service_env=args.service_env,
        big_bytes=args.big_mib * 2**20,
        workdir=workdir,
        cases=cases,
        source=source,
        measured=info["measured"],
        log=lambda message: print(f"  {message}", flush=True),
    )
    document: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {
            "runs": args.runs,
            "concurrency": args.concurrency,
            "service_env": {
                "FILEIMPORT_WORKER_PROCESSES": args.worker_processes,
                "FILEIMPORT_WORKER_CONCURRENCY": max(1, args.concurrency // (args.worker_processes + 1)),
                "FILEIMPORT_FETCH_PER_ORIGIN_CONCURRENCY": max(
                    1, args.concurrency // (args.worker_processes + 1)
                ),
                "FILEIMPORT_LOG_LEVEL": "WARNING",
                "case_c": "FILEIMPORT_WORKER_PROCESSES=0, concurrency not split",
                **args.service_env,
            },
            "curl": f"curl {curl} --parallel --parallel-max {args.concurrency} (to disk)",
            "latency_calls_per_run": args.calls,
            "completion": args.completion,
            "status_poll_seconds": args.poll if args.completion == "poll" else None,
            "mb": "10^6 bytes",
        },
        "backends": {},
    }
    exit_code = 0
    try:
        with nginx_origin(nginx, args.corpus, workdir / "origin", workers=info["usable_cores"]) as origin:
            document["origin"] = {"server": f"nginx {origin.version}", "workers": origin.workers}
            print(
                f"origin: nginx {origin.version} on {origin.base_url} ({origin.workers} workers, sendfile, "
                f"keep-alive, no access log); ceiling: curl {curl} --parallel --parallel-max {args.concurrency}",
                flush=True,
            )
            big_name = None
            profile_cases = [c for c in (args.profile_only or args.profile or "").split(",") if c]
            if ("c" in cases and not args.profile_only) or "c" in profile_cases:
                started = time.monotonic()
                make_file(origin.generated_dir / BIG_NAME, settings.big_bytes)
                big_name = BIG_NAME
                print(
                    f"made {settings.big_bytes / 2**20:.0f} MiB test file in {time.monotonic() - started:.1f} s"
                )
            if not args.profile_only:
                for key in backends:
                    document["backends"][key] = run_backend(
                        key, args, origin, icons, images, big_name, settings
                    )
            if profile_cases:
                document["profile"] = run_profiles(
                    profile_cases, args, origin, icons, images, big_name, settings
                )
    except Unavailable as exc:
        return skip(str(exc), args.json)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    document["elapsed_seconds"] = round(time.monotonic() - began, 1)
    document["machine"]["load_average_at_end"] = load_average()
    if document["backends"]:
        columns = {
            key: (LABELS[key], value.get("results", {}))
            for key, value in document["backends"].items()
            if "skipped" not in value
        }
        info_row = {
            "a_files": len(icons),
            "b_files": len(images),
            "b_bytes": sum(f.bytes for f in images),
            "c_bytes": settings.big_bytes,
        }
        print()
        print(
            f"fileimport bench, {document['date']}: {info['cores']} cores, median of {args.runs} run(s); "
            f"MB = 10^6 bytes; concurrency {args.concurrency} for both sides: curl --parallel-max "
            f"{args.concurrency}; fileimport serve --worker-processes {args.worker_processes}, i.e. "
            f"{args.worker_processes + 1} worker process(es) x FILEIMPORT_WORKER_CONCURRENCY = "
            f"FILEIMPORT_FETCH_PER_ORIGIN_CONCURRENCY = "
            f"{max(1, args.concurrency // (args.worker_processes + 1))} "
            f"((c): serve alone, concurrency {args.concurrency}); completion: {completion_text(settings)}"
            + "".join(f"; {key}={value}" for key, value in args.service_env.items())
        )
        print(f"origin: {document['origin']['server']} on 127.0.0.1; ceiling: {document['settings']['curl']}")
        print(load_note(document["machine"]))
        print()
        print(table(columns, info_row))
        for key, value in document["backends"].items():
            if "skipped" in value:
                print(f"{LABELS[key]}: SKIPPED: {value['skipped']}")
                continue
            print(origin_check(LABELS[key], value["results"]))
            print(cpu_notes(LABELS[key], value["results"]))
            note = fetcher_note(LABELS[key], value["results"])
            if note:
                print(note)
            errors = {
                c: r["error"] for c, r in value["results"].items() if isinstance(r, dict) and "error" in r
            }
            for case, error in errors.items():
                print(f"{LABELS[key]}: case {case} ERROR: {error}")
                exit_code = 1
        document["goals"] = {
            key: goal_status(value["results"])
            for key, value in document["backends"].items()
            if "skipped" not in value
        }
        document["goal_texts"] = {g.key: g.text for g in GOALS}
    print(f"\nmake bench took {document['elapsed_seconds']:.0f} s; results in {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return exit_code


def run_backend(
    key: str,
    args: argparse.Namespace,
    origin: Any,
    icons: list[CorpusFile],
    images: list[CorpusFile],
    big_name: str | None,
    settings: Settings,
) -> dict[str, Any]:
    started = time.monotonic()
    if key == "sqlite":
        results = BackendBench(Backend(key, LABELS[key]), origin, icons, images, big_name, settings).run()
        return {"label": LABELS[key], "results": results, "seconds": round(time.monotonic() - started, 1)}
    problem = postgres_available(args.postgres_url)
    if problem:
        print(f"  [postgresql] SKIPPED: {problem}", flush=True)
        return {"label": LABELS[key], "skipped": problem}
    with postgres_database(args.postgres_url) as url:
        backend = Backend(key, LABELS[key], database_url=url)
        results = BackendBench(backend, origin, icons, images, big_name, settings).run()
    return {"label": LABELS[key], "results": results, "seconds": round(time.monotonic() - started, 1)}


def load_note(machine: dict[str, Any]) -> str:
    """The machine's load average around the run; a busy machine makes every figure noisy."""
    start, end, cores = machine["load_average_at_start"], machine["load_average_at_end"], machine["cores"]
    note = f"load average {start:.2f} at the start, {end:.2f} at the end ({cores} cores)"
    if start > 0.5 * cores:
        note += ": WARNING, the machine was busy before the bench started; figures are noisy"
    return note


def cpu_notes(label: str, results: dict[str, Any]) -> str:
    """The service's CPU time during each throughput job: per file, and as a share of one core."""
    parts = []
    for case in ("a", "b", "c"):
        found = results.get(case)
        if not found or "error" in found or not found.get("service_seconds"):
            continue
        share = found["service_cpu_seconds"] / found["service_seconds"]
        per = (
            f"{found['service_cpu_ms_per_file']:.1f} ms per file"
            if case != "c"
            else f"{found['service_cpu_seconds'] / (found['total_bytes'] / 1e9):.2f} s per GB"
        )
        parts.append(
            f"({case}) {found['service_cpu_seconds']:.2f} s in {found['service_seconds']:.2f} s "
            f"= {share:.0%} of one core, {per}"
        )
    pressures = [
        run["machine_during_service"]["cpu_pressure"]
        for case in ("a", "b", "c")
        for run in (results.get(case) or {}).get("runs", [])
        if run.get("machine_during_service", {}).get("cpu_pressure") is not None
    ]
    busy = [
        run["machine_during_service"]["busy_cores"]
        for case in ("a", "b", "c")
        for run in (results.get(case) or {}).get("runs", [])
        if "machine_during_service" in run
    ]
    machine = ""
    if busy:
        machine = f" Whole machine during the service's jobs: {statistics.median(busy):.1f} cores busy"
        if pressures:
            median_pressure = statistics.median(pressures)
            machine += f", CPU pressure (PSI some) {median_pressure:.0%}"
            if median_pressure > 0.2:
                machine += " (other work competed for the CPU: every figure is noisy, the service's most)"
        machine += "."
    return f"{label}: service CPU: {'; '.join(parts) or 'no throughput case ran'}.{machine}"


def fetcher_note(label: str, results: dict[str, Any]) -> str | None:
    """Case (b)'s floor: the service's fetcher alone on the same URLs, beside curl and the service."""
    found = results.get("b")
    if not found or "error" in found or not found.get("fetcher_alone_mb_per_s"):
        return None
    alone, curl = found["fetcher_alone_mb_per_s"], found["curl_mb_per_s"]
    return (
        f"{label}: (b) the service's fetcher alone (bench/fetcher_alone.py: one process, concurrency as "
        f"curl's, no database, probe, store or API): {alone:,.0f} MB/s = {alone / curl:.0%} of curl; "
        f"the whole import {found['service_mb_per_s']:,.0f} MB/s = {found['ratio']:.0%}."
    )


def run_profiles(
    profile_cases: list[str],
    args: argparse.Namespace,
    origin: Any,
    icons: list[CorpusFile],
    images: list[CorpusFile],
    big_name: str | None,
    settings: Settings,
) -> dict[str, Any]:
    from bench.cases import job_body
    from bench.profiling import profile_case

    def big_body(tag: str) -> bytes:
        assert big_name is not None
        url = origin.generated_url(big_name)
        files = [{"url": url, "id": big_name, "fileName": big_name}]
        return json.dumps({"systemName": f"profile-c-{tag}", "files": files}).encode()

    jobs = {
        "a": (f"{len(icons)} icons in one job", lambda tag: job_body(f"profile-a-{tag}", origin, icons)),
        "b": (f"{len(images)} images in one job", lambda tag: job_body(f"profile-b-{tag}", origin, images)),
        "c": (f"one {settings.big_bytes / 2**20:.0f} MiB file", big_body),
    }
    warmup = job_body("profile-warmup", origin, icons[:64] + images[:4])
    backend = args.profile_backend
    results = {}
    for case in (c for c in profile_cases if c in jobs):
        what, make_body = jobs[case]
        if backend == "postgresql":
            problem = postgres_available(args.postgres_url)
            if problem:
                print(f"profile SKIPPED: {problem}")
                return {"skipped": problem}
            with postgres_database(args.postgres_url) as url:
                results[case] = profile_case(case, what, make_body, warmup, settings, RESULTS, backend, url)
        else:
            results[case] = profile_case(case, what, make_body, warmup, settings, RESULTS, backend)
    return results


def origin_check(label: str, results: dict[str, Any]) -> str:
    """Whether curl, from the same nginx, went faster than the service in every throughput case."""
    parts, slower = [], []
    for case, unit, key in (
        ("a", "files/s", "files_per_s"),
        ("b", "MB/s", "mb_per_s"),
        ("c", "MB/s", "mb_per_s"),
    ):
        found = results.get(case)
        if not found or "error" in found:
            continue
        parts.append(f"({case}) {found[f'curl_{key}']:,.0f} {unit}")
        if found["ratio"] >= 1:
            slower.append(case)
    if not parts:
        return f"{label}: no throughput case ran"
    verdict = (
        "nginx served every case faster than the service imported it, so the origin is not the bottleneck"
        if not slower
        else f"WARNING: the service matched curl in case(s) {', '.join(slower)}; the origin may be the limit there"
    )
    return f"{label}: curl from this nginx: {', '.join(parts)}; {verdict}."
