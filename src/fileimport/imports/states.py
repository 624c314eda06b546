"""States of an import job and of each file in it.

A job is ``started`` until every file has a final result, then ``success``
(even when some files failed, as in the reference's status example). The
reference also names ``failed`` for a job that could not complete as a
whole; this service fails files one by one, each with its own reason (even
a file whose import kept killing its worker), so it never ends a job so. A
file goes from ``pending`` to exactly one final result: ``success``,
``skipped`` or ``failed``.
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
