"""The four cases, measured on one backend: the service beside the curl ceiling, run by run."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ceiling import Download, curl_download
from bench.origin import Origin
from bench.service import (
    Backend,
    JobRun,
    Service,
    prepare,
    run_job,
    serve,
    service_env,
    webhook_secret,
)
from bench.webhook import WebhookReceiver, webhook_receiver

MB = 1_000_000


@dataclass(frozen=True)
class CorpusFile:
    path: str
    bytes: int


@dataclass
class Settings:
    """What one ``make bench`` measures, and how often."""

    runs: int
    concurrency: int
    worker_processes: int
    calls: int
    poll: float
    big_bytes: int
    workdir: Path
    cases: frozenset[str]
    source: Path | None = None
    measured: str = "work tree"
    log: Callable[[str], None] = print
    # "webhook": wait for the job's signed webhook, then one status GET; "poll": poll every ``poll`` s.
    completion: str = "webhook"
    # --service-env: more FILEIMPORT_* variables for every fileimport command.
    service_env: dict[str, str] = field(default_factory=dict)


def completion_text(settings: Settings) -> str:
    """How the bench learns that a job finished, in words."""
    if settings.completion == "webhook":
        return "webhook (the job's signed webhook, then one status GET)"
    return f"poll (a status GET every {settings.poll:g} s)"


@contextmanager
def completion_receiver(settings: Settings, env: dict[str, str]) -> Iterator[WebhookReceiver | None]:
    """In webhook mode, a receiver checking signatures with the secret of ``env``'s project
    ``default`` (after ``prepare``); None in poll mode."""
    if settings.completion != "webhook":
        yield None
        return
    with webhook_receiver(webhook_secret(env)) as receiver:
        yield receiver


@dataclass
class Case:
    """The figures of one case on one backend; ``errors`` stops it from counting."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99), linear interpolation between closest ranks."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def job_body(system_name: str, origin: Origin, files: list[CorpusFile], *, id_prefix: str = "") -> bytes:
    return json.dumps(
        {
            "systemName": system_name,
            "files": [
                {
                    "url": origin.url(f.path),
                    "id": id_prefix + f.path,
                    "fileName": Path(f.path).name,
                    "metadata": {},
                }
                for f in files
            ],
        }
    ).encode()


def empty_blob_store(data_dir: Path) -> None:
    """Remove stored blobs between runs, so that every run stores every file.

    The store is content-addressed: without this, runs after the first would
    find the bytes already stored and skip the write (and its fsync).
    """
    shutil.rmtree(data_dir / "blobs" / "sha256", ignore_errors=True)


class BackendBench:
    """Runs the selected cases on one backend with a fresh data folder (and database)."""

    def __init__(
        self,
        backend: Backend,
        origin: Origin,
        icons: list[CorpusFile],
        images: list[CorpusFile],
        big_name: str | None,
        settings: Settings,
    ) -> None:
        self.backend = backend
        self.origin = origin
        self.icons = icons
        self.images = images
        self.big_name = big_name
        self.s = settings
        self.data_dir = settings.workdir / f"{backend.key}-data"
        self.env = service_env(
            self.data_dir,
            settings.concurrency,
            backend.database_url,
            settings.source,
            worker_processes=settings.worker_processes,
            extra=settings.service_env,
        )
        # One file is one worker's work: (c) runs serve alone, so that its peak
        # RSS is the whole service's and no idle worker process is counted;
        # (d)'s POSTs go to serve alone too, with no worker at all.
        self.single_process_env = service_env(
            self.data_dir,
            settings.concurrency,
            backend.database_url,
            settings.source,
            extra=settings.service_env,
        )
        self.log_path = settings.workdir / f"{backend.key}-service.log"
        self.results: dict[str, Any] = {}
        self.finished_job: str | None = None
        self.receiver: WebhookReceiver | None = None

    def say(self, message: str) -> None:
        self.s.log(f"[{self.backend.key}] {message}")

    def run(self) -> dict[str, Any]:
        self.say(f"preparing {self.data_dir} (migrate, project, token)")
        token = prepare(self.env)
        with completion_receiver(self.s, self.env) as receiver:
            if receiver is not None:
                self.say(f"webhook receiver on 127.0.0.1:{receiver.port}")
            self.receiver = receiver
            try:
                self._run_cases(token)
            finally:
                self.receiver = None
        return self.results

    def _run_cases(self, token: str) -> None:
        wanted = self.s.cases
        with serve(self.env, token, self.log_path) as service:
            self.say(f"service pid {service.pid} on {service.base_url}; warm-up job")
            warm = self._job(
                service, job_body("bench-warmup", self.origin, self.icons[:64] + self.images[:4]), 300
            )
            if not warm.ok:
                self.say(f"warm-up job had failures: {warm.failures[:3]}")
            empty_blob_store(self.data_dir)
            if "a" in wanted:
                self._guard("a", lambda: self._throughput(service, "a", self.icons))
            if "b" in wanted:
                self._guard("b", lambda: self._throughput(service, "b", self.images))
            if "d" in wanted:
                self._guard("d_status", lambda: self._status_latency(service))
        if "c" in wanted and self.big_name:
            self._guard("c", lambda: self._big_file(token))
        if "d" in wanted:
            self._guard("d_post", lambda: self._post_latency(token))

    def _job(self, service: Service, body: bytes, timeout: float) -> JobRun:
        """One job, its completion learnt the way ``--completion`` says."""
        return run_job(service, body, poll=self.s.poll, timeout=timeout, receiver=self.receiver)

    def _guard(self, key: str, measure: Callable[[], dict[str, Any]]) -> None:
        try:
            self.results[key] = measure()
        except Exception as exc:
            self.say(f"case {key} failed: {exc}")
            self.results[key] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}

    def _throughput(self, service: Service, case: str, files: list[CorpusFile]) -> dict[str, Any]:
        urls = [self.origin.url(f.path) for f in files]
        total_bytes = sum(f.bytes for f in files)
        runs = []
        for run in range(self.s.runs):
            os.sync()  # both sides start with no dirty pages of the other's writes
            curl = curl_download(urls, self.s.workdir / "curl-out", parallel=self.s.concurrency)
            os.sync()
            body = job_body(f"bench-{case}-{run}", self.origin, files)
            job = self._job(service, body, 900)
            empty_blob_store(self.data_dir)
            if case == "a":
                self.finished_job = job.job_id
            record = self._run_record(job, curl, len(files), total_bytes)
            alone = ""
            if case == "b":
                os.sync()
                record["fetcher_alone_seconds"] = self._fetcher_alone(urls)
                record["fetcher_alone_mb_per_s"] = total_bytes / MB / record["fetcher_alone_seconds"]
                alone = f", the fetcher alone {record['fetcher_alone_seconds']:.3f} s"
            runs.append(record)
            self.say(
                f"({case}) run {run + 1}/{self.s.runs}: service {job.seconds:.3f} s, curl {curl.seconds:.3f} s"
                + alone
                + ("" if job.ok else f", {len(job.failures)} FAILED")
            )
        summary = self._summary(runs, files=len(files), total_bytes=total_bytes)
        if case == "b":
            summary["fetcher_alone_mb_per_s"] = median([r["fetcher_alone_mb_per_s"] for r in runs])
        return summary

    def _fetcher_alone(self, urls: list[str]) -> float:
        """Seconds the service's fetcher alone takes for ``urls`` (`bench/fetcher_alone.py`), at the
        service's whole concurrency in one process."""
        spool = self.s.workdir / "fetcher-alone-spool"
        done = subprocess.run(
            [
                sys.executable,
                "-P",  # not bench/ on sys.path: its modules' names are nobody else's business
                str(Path(__file__).with_name("fetcher_alone.py")),
                str(spool),
                str(self.s.concurrency),
            ],
            input=json.dumps(urls),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"bench/fetcher_alone.py exited {done.returncode}: {done.stderr.strip()[-500:]}"
            )
        seconds: float = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        return seconds

    @staticmethod
    def _run_record(job: JobRun, curl: Download, files: int, total_bytes: int) -> dict[str, Any]:
        curl_seconds = curl.seconds
        return {
            "service_seconds": job.seconds,
            "service_server_seconds": job.server_seconds,
            "completion": job.completion,
            # The status GETs within service_seconds: the polls, or the one after the webhook.
            "status_gets": job.status_gets,
            "service_webhook_seconds": job.webhook_seconds,
            "webhook_state_at_status": job.webhook_state,
            # CPU of the service process (all threads) from the POST to the finished status.
            "service_cpu_seconds": job.cpu_seconds,
            "service_cpu_user_seconds": job.cpu_user_seconds,
            "service_cpu_system_seconds": job.cpu_system_seconds,
            "service_cpu_ms_per_file": 1000 * job.cpu_seconds / files,
            "load_average_before": job.load_before,
            "machine_during_service": job.machine,
            "machine_during_curl": curl.machine,
            "service_files_per_s": files / job.seconds,
            "service_mb_per_s": total_bytes / MB / job.seconds,
            "curl_seconds": curl_seconds,
            "curl_files_per_s": files / curl_seconds,
            "curl_mb_per_s": total_bytes / MB / curl_seconds,
            "job_id": job.job_id,
            "counts": job.counts,
            "failures": job.failures[:20],
            "failed": len(job.failures),
        }

    @staticmethod
    def _summary(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        summary: dict[str, Any] = {"runs": runs, **extra}
        for key in (
            "service_seconds",
            "service_files_per_s",
            "service_mb_per_s",
            "service_cpu_seconds",
            "service_cpu_ms_per_file",
            "curl_seconds",
            "curl_files_per_s",
            "curl_mb_per_s",
        ):
            summary[key] = median([r[key] for r in runs])
        # Same files, same bytes: the ratio of the rates is the ratio of MB/s and of files/s.
        summary["ratio"] = summary["service_files_per_s"] / summary["curl_files_per_s"]
        summary["failed"] = sum(r["failed"] for r in runs)
        return summary

    def _big_file(self, token: str) -> dict[str, Any]:
        assert self.big_name is not None
        url = self.origin.generated_url(self.big_name)
        total_bytes = self.s.big_bytes
        runs = []
        for run in range(self.s.runs):
            os.sync()
            curl = curl_download([url], self.s.workdir / "curl-out", parallel=self.s.concurrency)
            os.sync()
            # A fresh process per run: VmHWM is the peak of the process's whole life.
            with serve(self.single_process_env, token, self.log_path) as service:
                idle_rss = service.rss()
                body = json.dumps(
                    {
                        "systemName": f"bench-c-{run}",
                        "files": [{"url": url, "id": self.big_name, "fileName": self.big_name}],
                    }
                ).encode()
                job = self._job(service, body, 1800)
                peak = service.peak_rss()
            empty_blob_store(self.data_dir)
            record = self._run_record(job, curl, 1, total_bytes)
            record.update(idle_rss_bytes=idle_rss, peak_rss_bytes=peak)
            runs.append(record)
            self.say(
                f"(c) run {run + 1}/{self.s.runs}: service {job.seconds:.2f} s, curl {curl.seconds:.2f} s, "
                f"peak RSS {peak / MB:.0f} MB (idle {idle_rss / MB:.0f} MB)"
                + ("" if job.ok else f", FAILED: {job.failures[:1]}")
            )
        summary = self._summary(runs, files=1, total_bytes=total_bytes)
        summary["peak_rss_bytes"] = median([r["peak_rss_bytes"] for r in runs])
        summary["peak_rss_max_bytes"] = max(r["peak_rss_bytes"] for r in runs)
        summary["idle_rss_bytes"] = median([r["idle_rss_bytes"] for r in runs])
        return summary

    def _latency_runs(self, call: Callable[[], Any], what: str) -> dict[str, Any]:
        for _ in range(3):  # warm-up, not counted
            call()
        runs = []
        for run in range(self.s.runs):
            samples = []
            for _ in range(self.s.calls):
                started = time.perf_counter()
                call()
                samples.append(time.perf_counter() - started)
            ms = [s * 1000 for s in samples]
            runs.append(
                {
                    "calls": len(ms),
                    "p50_ms": percentile(ms, 50),
                    "p99_ms": percentile(ms, 99),
                    "max_ms": max(ms),
                }
            )
            self.say(
                f"(d) {what} run {run + 1}/{self.s.runs}: p50 {runs[-1]['p50_ms']:.1f} ms, p99 {runs[-1]['p99_ms']:.1f} ms"
            )
        return {
            "runs": runs,
            "calls_per_run": self.s.calls,
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
        }

    def _status_latency(self, service: Service) -> dict[str, Any]:
        job_id = self.finished_job
        if job_id is None:
            job_id = self._job(service, job_body("bench-d", self.origin, self.icons), 900).job_id
            empty_blob_store(self.data_dir)

        def call() -> None:
            response = service.status(job_id)
            if response.status_code != 200 or b'"finished":true' not in response.content:
                raise RuntimeError(f"status answered {response.status_code}: {response.text[:300]}")

        result = self._latency_runs(call, "status of a finished 1000-file job")
        result["job_id"] = job_id
        result["response_bytes"] = len(service.status(job_id).content)
        return result

    def _post_latency(self, token: str) -> dict[str, Any]:
        # API only: with a worker, every POSTed 1000-file job would be imported
        # at once and the figure would be the POST under import load; so no
        # worker process either (--no-worker keeps --worker-processes' ones).
        body = job_body("bench-d-post", self.origin, self.icons)
        with serve(self.single_process_env, token, self.log_path, worker=False) as service:

            def call() -> None:
                response = service.post_job(body)
                if response.status_code != 200:
                    raise RuntimeError(f"POST answered {response.status_code}: {response.text[:300]}")

            result = self._latency_runs(call, "POST of 1000 files")
        result["request_bytes"] = len(body)
        result["files"] = len(self.icons)
        return result
