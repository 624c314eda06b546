"""A project's media type configuration and metadata validation.

The file format (YAML or JSON) is SPEC.md "Project configuration"; sizes are
bytes or strings with a unit (``15MB`` = 15 * 10**6 bytes, ``2GiB`` = 2 * 2**30
bytes, as pydantic's ``ByteSize`` reads them).
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationInfo, field_validator

MIB = 1024 * 1024
GIB = 1024 * MIB


class MediaKind(StrEnum):
    IMAGE = "mediaImage"
    VIDEO = "mediaVideo"
    FILE = "mediaFile"


class MetadataFieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    LIST = "list"


NEW_CONFIG = "new_config"
"""Validation context key: set by `ProjectConfig.for_new_project` only."""

_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HANDLE_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit"

MAX_FILE_SIZE_LIMIT = 5 * 1024**4
"""Largest ``maxFileSize`` a new configuration may set, in bytes: 5 TiB, the largest object
S3 stores in one piece."""


def _check_handle(value: str, info: ValidationInfo) -> str:
    """A new configuration's handle must be a plain word (a request names it; a space or a
    bidi control in it would look like another handle)."""
    if _new(info) and not _HANDLE.fullmatch(value):
        raise ValueError(f"{value!r} is no handle: use {HANDLE_RULE}")
    return value


def _new(info: ValidationInfo) -> bool:
    """Whether a configuration is being created (checked strictly), not loaded as once stored."""
    return bool(info.context and info.context.get(NEW_CONFIG))


class MetadataField(BaseModel):
    """One metadata field a media type accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    handle: str = Field(min_length=1, max_length=100)
    type: MetadataFieldType = MetadataFieldType.TEXT
    required: bool = False
    max_length: int | None = Field(default=None, alias="maxLength", ge=1)

    _handle = field_validator("handle")(_check_handle)

    @field_validator("max_length")
    @classmethod
    def _length_of_text_or_list(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("type")
        if _new(info) and value is not None and kind not in (MetadataFieldType.TEXT, MetadataFieldType.LIST):
            raise ValueError(f"applies to text and list fields only, not to a {kind} field")
        return value

    def check(self, value: Any) -> str | None:
        """The problem with ``value`` for this field, or None when it is valid."""
        match self.type:
            case MetadataFieldType.TEXT:
                if not isinstance(value, str):
                    return "must be a string"
                if self.max_length is not None and len(value) > self.max_length:
                    return f"must be at most {self.max_length} characters"
            case MetadataFieldType.NUMBER:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return "must be a number"
            case MetadataFieldType.BOOLEAN:
                if not isinstance(value, bool):
                    return "must be true or false"
            case MetadataFieldType.DATE:
                if not isinstance(value, str) or not _is_iso_date(value):
                    return "must be an ISO 8601 date or date-time string"
            case MetadataFieldType.LIST:
                if not isinstance(value, list):
                    return "must be a list"
                if self.max_length is not None and len(value) > self.max_length:
                    return f"must have at most {self.max_length} items"
        return None


def _is_iso_date(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


DEFAULT_METADATA = (
    MetadataField(handle="title"),
    MetadataField(handle="caption"),
    MetadataField(handle="source"),
    MetadataField(handle="description"),
)


# RFC 6838 §4.2 restricted names, or a pattern of this service (type/*, */*, *).
_MIME_TYPE_OR_PATTERN = re.compile(
    r"\*|\*/\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/(?:\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})"
)


class MediaTypeConfig(BaseModel):
    """A media type: its handle, kind, accepted MIME types, size limit and metadata fields.

    A new configuration (`ProjectConfig.for_new_project`) must also have a
    size limit of at least 1 byte, MIME types or patterns that can match
    (``image/png``, ``image/*``, ``*/*``) and each metadata field once;
    configurations stored before these checks load as they are.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    handle: str = Field(min_length=1, max_length=100)
    type: MediaKind
    max_file_size: ByteSize = Field(alias="maxFileSize")
    allowed_mime_types: tuple[str, ...] = Field(default=(), alias="allowedMimeTypes")
    metadata: tuple[MetadataField, ...] = DEFAULT_METADATA

    _handle = field_validator("handle")(_check_handle)

    @field_validator("max_file_size")
    @classmethod
    def _at_least_one_byte(cls, value: ByteSize, info: ValidationInfo) -> ByteSize:
        if _new(info) and value < 1:
            raise ValueError("must be at least 1 byte: every file would fail as too large")
        if _new(info) and value > MAX_FILE_SIZE_LIMIT:
            raise ValueError("must be at most 5 TiB, the largest object S3 stores in one piece")
        return value

    @field_validator("allowed_mime_types")
    @classmethod
    def _mime_types_or_patterns(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if _new(info):
            for pattern in value:
                if not _MIME_TYPE_OR_PATTERN.fullmatch(pattern):
                    raise ValueError(
                        f"{pattern!r} is not a MIME type or pattern (type/subtype, type/*, */*): "
                        "it would match no file"
                    )
        return value

    @field_validator("metadata")
    @classmethod
    def _fields_once(
        cls, value: tuple[MetadataField, ...], info: ValidationInfo
    ) -> tuple[MetadataField, ...]:
        if _new(info):
            seen: set[str] = set()
            for field in value:
                if field.handle in seen:
                    raise ValueError(f"field '{field.handle}' is declared twice; only the first would count")
                seen.add(field.handle)
        return value

    def accepts_mime_type(self, mime_type: str) -> bool:
        """Whether a file of ``mime_type`` may be stored as this media type.

        Without ``allowedMimeTypes``, an image type takes ``image/*``, a video
        type ``video/*`` and a file type anything. Entries may end in ``/*``.
        """
        patterns = self.allowed_mime_types or _DEFAULT_PATTERNS[self.type]
        return any(_mime_matches(pattern, mime_type) for pattern in patterns)

    def metadata_problems(self, metadata: dict[str, Any]) -> dict[str, str]:
        """Problems keyed by field handle; empty when ``metadata`` is valid.

        A required field is missing when absent, null, or text of whitespace only.
        """
        fields = {f.handle: f for f in self.metadata}
        problems: dict[str, str] = {}
        for key, value in metadata.items():
            field = fields.get(key)
            if field is None:
                problems[key] = f"is not a metadata field of media type '{self.handle}'"
            elif value is not None and (problem := field.check(value)):
                problems[key] = problem
        for field in self.metadata:
            if not field.required:
                continue
            value = metadata.get(field.handle)
            if value is None:
                problems[field.handle] = f"is required by media type '{self.handle}'"
            elif isinstance(value, str) and not value.strip():
                problems[field.handle] = (
                    f"is required by media type '{self.handle}'; blank text does not count"
                )
        return problems


_DEFAULT_PATTERNS: dict[MediaKind, tuple[str, ...]] = {
    MediaKind.IMAGE: ("image/*",),
    MediaKind.VIDEO: ("video/*",),
    MediaKind.FILE: ("*/*",),
}


def _mime_matches(pattern: str, mime_type: str) -> bool:
    pattern = pattern.lower()
    if pattern in ("*", "*/*"):
        return True
    if pattern.endswith("/*"):
        return mime_type.lower().startswith(pattern[:-1])
    return pattern == mime_type.lower()


DEFAULT_MEDIA_TYPES = (
    MediaTypeConfig(handle="image", type=MediaKind.IMAGE, max_file_size=ByteSize(100 * MIB)),
    MediaTypeConfig(handle="video", type=MediaKind.VIDEO, max_file_size=ByteSize(10 * GIB)),
    MediaTypeConfig(handle="file", type=MediaKind.FILE, max_file_size=ByteSize(2 * GIB)),
)


class ProjectConfig(BaseModel):
    """The whole configuration of a project (``mediaTypes``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    media_types: tuple[MediaTypeConfig, ...] = Field(
        default=DEFAULT_MEDIA_TYPES, alias="mediaTypes", min_length=1
    )

    @classmethod
    def for_new_project(cls, data: Any) -> Self:
        """``data`` (the YAML or JSON file's content) validated strictly, as for a new project.

        Raises pydantic's ``ValidationError``.
        """
        return cls.model_validate(data, context={NEW_CONFIG: True})

    @field_validator("media_types")
    @classmethod
    def _unique_handles(cls, value: tuple[MediaTypeConfig, ...]) -> tuple[MediaTypeConfig, ...]:
        handles = [m.handle for m in value]
        twice = sorted({h for h in handles if handles.count(h) > 1})
        if twice:
            raise ValueError(", ".join(f"media type '{h}' is declared twice" for h in twice))
        return value

    def media_type(self, handle: str) -> MediaTypeConfig | None:
        """The media type with ``handle``, or None."""
        return next((m for m in self.media_types if m.handle == handle), None)

    def media_type_for(self, mime_type: str) -> MediaTypeConfig | None:
        """The media type chosen for a file when the batch names none.

        image/* goes to the first image type that accepts it, video/* to the
        first video type, anything else (and what those refuse) to the first
        file type that accepts it; None when no type accepts it.
        """
        major = mime_type.split("/", 1)[0]
        preferred = {"image": MediaKind.IMAGE, "video": MediaKind.VIDEO}.get(major)
        order = [m for m in self.media_types if m.type == preferred] + [
            m for m in self.media_types if m.type == MediaKind.FILE
        ]
        return next((m for m in order if m.accepts_mime_type(mime_type)), None)

    def metadata_problem_for_any_type(self, handle: str, value: Any) -> str | None:
        """What is wrong with metadata field ``handle`` set to ``value`` whatever the media type;
        None when some media type would take it.

        For a file whose media type is chosen from its bytes after the download:
        refused at once only what no type accepts (a field no type declares, a
        value every declaring type refuses); the chosen type's own rules are
        checked once it is known (``invalid_metadata``).
        """
        declared = [f for m in self.media_types for f in m.metadata if f.handle == handle]
        if not declared:
            return "is not a metadata field of any media type"
        if value is None:
            return None
        problems = [f.check(value) for f in declared]
        return problems[0] if all(problems) else None

    def to_json(self) -> dict[str, Any]:
        """The configuration as stored in the database (aliases, plain types)."""
        return self.model_dump(mode="json", by_alias=True)
