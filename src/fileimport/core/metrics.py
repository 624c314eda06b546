"""Prometheus metrics of the import pipeline (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

FILES_IMPORTED = Counter(
    "fileimport_files_total", "Files that reached a final result, by result and code.", ["status", "code"]
)
BYTES_FETCHED = Counter("fileimport_fetched_bytes_total", "Bytes received from origins (after decoding).")
JOBS_FINISHED = Counter("fileimport_jobs_finished_total", "Import jobs that ended, by state.", ["state"])
FILE_SECONDS = Histogram(
    "fileimport_file_seconds",
    "Seconds from the start of a file's import to its result.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
WEBHOOK_ATTEMPTS = Counter(
    "fileimport_webhook_attempts_total", "Webhook delivery attempts, by outcome.", ["outcome"]
)
