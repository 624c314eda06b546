"""Request and response models of the import API (reference: Import Files)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from fileimport.core.errors import NUL_FREE_PATTERN
from fileimport.core.urls import MAX_URL_LENGTH, check_http_url
from fileimport.imports.states import FileStatus, JobState

MAX_CONTEXT_BYTES = 8192
BLANK_MESSAGE = "must not be blank (only whitespace)"
# C0 and C1 controls (Unicode category Cc), the bidirectional embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069), the line and paragraph
# separators (U+2028, U+2029) and the invisible marks (U+00AD soft hyphen,
# U+061C ALM, U+180E, U+200B ZWSP, U+200E LRM, U+200F RLM, U+2060 word joiner,
# U+2061-U+2064 invisible operators, U+FEFF BOM) and the Hangul fillers that
# show as blanks (U+115F, U+1160, U+3164, U+FFA0): in a download name they break headers and file systems, or
# show "cat\u202egpj.exe" as "catexe.jpg" (CVE-2021-42574, "Trojan Source");
# in an id they make two different ids look the same. (U+200C and U+200D stay:
# scripts and emoji need them.)
_INVISIBLE_CHARACTERS = (
    "U+00AD, U+061C, U+115F, U+1160, U+180E, U+200B, U+200E, U+200F, U+2028, U+2029, U+202A-U+202E, "
    "U+2060-U+2064, U+2066-U+2069, U+3164, U+FEFF, U+FFA0"
)
_FORBIDDEN_CHARACTER = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u061c\u115f\u1160\u180e\u200b\u200e\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u2069\u3164\ufeff\uffa0]"
)
PRINTABLE_RULE = (
    f"no control characters (Unicode Cc) and no invisible formatting characters ({_INVISIBLE_CHARACTERS})"
)


def not_blank(value: str) -> str:
    """``value`` unchanged; raises ValueError (BLANK_MESSAGE) when it is only whitespace (``str.isspace``)."""
    if value.isspace():
        raise ValueError(BLANK_MESSAGE)
    return value


def printable(value: str) -> str:
    """``value`` unchanged; raises ValueError naming the first control or invisible formatting character."""
    if found := _FORBIDDEN_CHARACTER.search(value):
        raise ValueError(
            "must not contain control characters or invisible formatting characters "
            f"({_INVISIBLE_CHARACTERS}); found U+{ord(found.group()):04X}"
        )
    return value


def _http_url(value: str) -> str:
    problem = check_http_url(value)
    if problem:
        raise ValueError(problem)
    return value


# The JSON Schema states the outline; ``check_http_url`` has the last word.
HttpUrl = Annotated[
    str,
    AfterValidator(_http_url),
    Field(json_schema_extra={"maxLength": MAX_URL_LENGTH, "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\\s]"}),
]


class ImportFileSpec(BaseModel):
    """One file of a batch, as the reference names its keys."""

    # A misspelt key ("metaData", "mediatype") is a 400 naming it, not a file imported without it.
    model_config = ConfigDict(populate_by_name=True, str_strip_whitespace=False, extra="forbid")

    url: HttpUrl = Field(description="Absolute http(s) URL, at most 2048 characters.")
    id: str = Field(
        min_length=1,
        max_length=255,
        pattern=NUL_FREE_PATTERN,
        description=f"Stored as externalId; not only whitespace, {PRINTABLE_RULE}.",
    )
    file_name: str = Field(
        alias="fileName",
        min_length=1,
        max_length=255,
        pattern=NUL_FREE_PATTERN,
        description=f"The entry's title and the base of its download file name; not only whitespace, {PRINTABLE_RULE}.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields of the media type's metadata configuration; no NUL characters.",
    )
    media_type: str | None = Field(
        default=None,
        alias="mediaType",
        min_length=1,
        max_length=100,
        pattern=NUL_FREE_PATTERN,
        description="Handle of a configured media type; chosen from the sniffed bytes when absent.",
    )

    _not_blank = field_validator("id", "file_name")(not_blank)
    _printable = field_validator("id", "file_name")(printable)


# The reference's example request.
REFERENCE_EXAMPLE: dict[str, Any] = {
    "systemName": "identifier-for-your-system",
    "webhook": "https://my-domain.com/webhooks/file-import",
    "context": {"myIdentifier": "some-identifier-sent-to-the-webhook"},
    "files": [
        {
            "url": "https://placekitten.com/800/600",
            "id": "123abc",
            "fileName": "cat",
            "metadata": {"caption": "foo"},
        }
    ],
}


class ImportRequest(BaseModel):
    """Body of ``POST /api/v1/import/files``."""

    # A misspelt "webHook" is a 400 naming it, not a job whose webhook never comes.
    model_config = ConfigDict(
        populate_by_name=True, extra="forbid", json_schema_extra={"examples": [REFERENCE_EXAMPLE]}
    )

    system_name: str = Field(
        alias="systemName",
        min_length=1,
        max_length=255,
        pattern=NUL_FREE_PATTERN,
        description=f"Identifier of the system imported from; not only whitespace, {PRINTABLE_RULE}.",
    )
    webhook: HttpUrl | None = Field(default=None, description="Notified by POST when the job finishes.")
    context: dict[str, Any] | None = Field(
        default=None, description="Passed to the webhook; compact JSON at most 8192 bytes, no NUL characters."
    )
    files: list[ImportFileSpec] = Field(min_length=1)

    _system_name_not_blank = field_validator("system_name")(not_blank)
    _system_name_printable = field_validator("system_name")(printable)

    @field_validator("context")
    @classmethod
    def _context_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            # surrogatepass: an unpaired surrogate is counted here and named as
            # such by the text check (json_text_problems), not as a codec error.
            size = len(
                json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
            )
            if size > MAX_CONTEXT_BYTES:
                raise ValueError(f"must be at most {MAX_CONTEXT_BYTES} bytes as JSON, is {size}")
        return value


class JobCreated(BaseModel):
    id: str


class Progress(BaseModel):
    """Files counted by result so far."""

    total: int
    pending: int
    success: int
    skipped: int
    failed: int


class FileResult(BaseModel):
    """One file's result; ``status`` and ``state`` carry the same value."""

    model_config = ConfigDict(serialize_by_alias=True)

    status: FileStatus
    state: FileStatus
    system_name: str = Field(serialization_alias="systemName")
    external_id: str = Field(serialization_alias="externalId")
    media_id: str | None = Field(default=None, serialization_alias="mediaId")
    reason: str | None = None
    code: str | None = None


class WebhookStatus(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    state: str
    attempts: int
    last_error: str | None = Field(default=None, serialization_alias="lastError")
    last_status: int | None = Field(default=None, serialization_alias="lastStatus")
    next_attempt_at: datetime | None = Field(default=None, serialization_alias="nextAttemptAt")


class JobStatus(BaseModel):
    """``GET /api/v1/import/files/status``: ``files`` only once ``finished``."""

    model_config = ConfigDict(serialize_by_alias=True)

    finished: bool
    state: JobState
    id: str
    system_name: str = Field(serialization_alias="systemName")
    started_at: datetime = Field(serialization_alias="startedAt")
    finished_at: datetime | None = Field(default=None, serialization_alias="finishedAt")
    reason: str | None = None
    progress: Progress
    files: list[FileResult] | None = None
    webhook: WebhookStatus | None = None
