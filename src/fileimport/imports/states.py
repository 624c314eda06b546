"""States of an import job and of each file in it.

A job is ``started`` until every file has a final result, then ``success``
(even when some files failed, as in the reference's status example) or
``failed`` when the job as a whole could not complete (cancelled, or a fault
not tied to one file outlasted its retries). A file goes from ``pending``
to exactly one final result: ``success``, ``skipped`` or ``failed``.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    STARTED = "started"
    SUCCESS = "success"
    FAILED = "failed"


class FileStatus(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    SKIPPED = "skipped"
    FAILED = "failed"
