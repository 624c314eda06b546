"""Media library response models (SPEC.md "Media library")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AssetOut(BaseModel):
    """The stored file of an entry; ``size`` in bytes, ``duration`` in seconds."""

    key: str
    url: str
    mime_type: str = Field(serialization_alias="mimeType")
    size: int
    filename: str
    sha256: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None


class MediaEntryOut(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    id: str
    version: int
    media_type: str = Field(serialization_alias="mediaType")
    system_name: str = Field(serialization_alias="systemName")
    external_id: str = Field(serialization_alias="externalId")
    asset: AssetOut
    metadata: dict[str, Any]
    created_at: datetime = Field(serialization_alias="createdAt")
    updated_at: datetime = Field(serialization_alias="updatedAt")


class MediaEntryList(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    media_library_entries: list[MediaEntryOut] = Field(serialization_alias="mediaLibraryEntries")
