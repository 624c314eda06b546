"""HTTP routes of the media library and the asset download."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from fileimport.auth.dependencies import get_runtime, require_scope
from fileimport.auth.service import SCOPE_READ, Principal
from fileimport.core.errors import ApiError, NotFound, ValidationFailed
from fileimport.core.runtime import Runtime
from fileimport.media import repository
from fileimport.media.schemas import MediaEntryList, MediaEntryOut
from fileimport.media.service import download_filename, to_schema

router = APIRouter(prefix="/api/v1/mediaLibrary", tags=["media library"])
assets_router = APIRouter(tags=["assets"])

MAX_IDS = 100
# Types a browser could run as a document: served as attachments in a sandbox.
ACTIVE_CONTENT = ("image/svg+xml", "text/html", "application/xhtml+xml", "text/xml", "application/xml")
RESTRICTIVE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@router.get("/{media_id}", response_model=MediaEntryOut, summary="Get a media library entry")
async def get_media_entry(
    media_id: str,
    principal: Annotated[Principal, Depends(require_scope(SCOPE_READ))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> MediaEntryOut:
    async with runtime.db.sessionmaker() as session:
        entry = await repository.get_entry(session, principal.project_id, media_id)
    if entry is None:
        raise NotFound({"id": f"no media library entry '{media_id}'"})
    return to_schema(entry, runtime.settings.public_url)


@router.get("", response_model=MediaEntryList, summary="Find media library entries")
async def find_media_entries(
    principal: Annotated[Principal, Depends(require_scope(SCOPE_READ))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    system_name: Annotated[str | None, Query(alias="systemName", max_length=255)] = None,
    external_id: Annotated[str | None, Query(alias="externalId", max_length=255)] = None,
    ids: Annotated[str | None, Query(description="Comma-separated media ids (at most 100).")] = None,
) -> MediaEntryList:
    async with runtime.db.sessionmaker() as session:
        if ids is not None:
            wanted = [i for i in (part.strip() for part in ids.split(",")) if i]
            if not wanted or len(wanted) > MAX_IDS:
                raise ValidationFailed({"ids": f"must list 1 to {MAX_IDS} ids"})
            entries = await repository.list_entries_by_ids(session, principal.project_id, wanted)
        elif system_name and external_id:
            entry = await repository.get_entry_by_key(session, principal.project_id, system_name, external_id)
            entries = [entry] if entry else []
        else:
            raise ValidationFailed({"query": "give systemName and externalId, or ids"})
    public_url = runtime.settings.public_url
    return MediaEntryList(media_library_entries=[to_schema(e, public_url) for e in entries])


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single ``Range: bytes=`` header → (start, end exclusive), RFC 9110 §14.

    None when the header is absent, malformed or names several ranges (the
    whole representation is then sent, as the RFC allows); raises
    RangeNotSatisfiable when the range lies outside ``size`` bytes.
    """
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
    else:
        start, end = max(0, size - int(last)), size
    if start >= size or start >= end:
        raise RangeNotSatisfiable(size)
    return start, end


class RangeNotSatisfiable(ApiError):
    status_code = 416

    def __init__(self, size: int) -> None:
        super().__init__(
            {"Range": f"outside the {size} bytes of the asset"}, headers={"Content-Range": f"bytes */{size}"}
        )


@assets_router.api_route(
    "/assets/{media_id}/{filename}",
    methods=["GET", "HEAD"],
    summary="Download an entry's bytes",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "Partial content"}},
)
async def download_asset(
    media_id: str,
    filename: str,
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> Response:
    """The stored bytes; the media id in the path is the capability (128 random bits)."""
    async with runtime.db.sessionmaker() as session:
        entry = await repository.get_entry_by_id(session, media_id)
    if entry is None:
        raise NotFound({"id": f"no asset for '{media_id}'"})
    size = entry.size
    etag = f'"{entry.sha256}"'
    name = download_filename(entry)
    active = entry.mime_type in ACTIVE_CONTENT
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=300",
        "Content-Disposition": f"{'attachment' if active else 'inline'}; filename*=UTF-8''{quote(name)}",
    }
    if active:
        headers["Content-Security-Policy"] = RESTRICTIVE_CSP
    if request.headers.get("if-none-match") in (etag, entry.sha256):
        return Response(status_code=304, headers=headers)
    byte_range = None
    range_header = request.headers.get("range")
    if range_header and request.headers.get("if-range", etag) == etag:
        byte_range = parse_range(range_header, size)
    start, end = byte_range or (0, size)
    headers["Content-Length"] = str(end - start)
    status = 200
    if byte_range:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

    async def body() -> AsyncIterator[bytes]:
        async for chunk in runtime.storage.open_range(entry.asset_key, start, end):
            yield chunk

    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type=entry.mime_type)
    return StreamingResponse(body(), status_code=status, headers=headers, media_type=entry.mime_type)
