"""HTTP routes of the media library and the asset download."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from fileimport.auth.dependencies import get_runtime, require_scope
from fileimport.auth.service import SCOPE_READ, Principal
from fileimport.core.errors import (
    NUL_FREE_PATTERN,
    ApiError,
    NotFound,
    ValidationFailed,
    error_responses,
)
from fileimport.core.http import add_get_and_head_route, reject_repeated_query_parameters
from fileimport.core.runtime import Runtime
from fileimport.media import repository
from fileimport.media.schemas import MediaEntryList, MediaEntryOut
from fileimport.media.service import download_filename, to_schema

log = structlog.get_logger(__name__)

router = APIRouter(
    prefix="/api/v1/mediaLibrary", tags=["media library"], responses=error_responses(400, 401, 403)
)
assets_router = APIRouter(tags=["assets"])

MAX_IDS = 100
MAX_ID_LENGTH = 255
MediaId = Annotated[
    str,
    Path(alias="mediaId", min_length=1, max_length=MAX_ID_LENGTH, pattern=NUL_FREE_PATTERN),
]
# Types a browser could run as a document: served as attachments in a sandbox.
ACTIVE_CONTENT = ("image/svg+xml", "text/html", "application/xhtml+xml", "text/xml", "application/xml")
RESTRICTIVE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@router.get(
    "/{mediaId}",
    response_model=MediaEntryOut,
    operation_id="getMediaLibraryEntry",
    summary="Get a media library entry",
    responses=error_responses(404),
)
async def get_media_entry(
    media_id: MediaId,
    principal: Annotated[Principal, Depends(require_scope(SCOPE_READ))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> MediaEntryOut:
    entry = await runtime.db.run_read(
        partial(repository.get_entry, project_id=principal.project_id, media_id=media_id)
    )
    if entry is None:
        raise NotFound({"mediaId": f"no media library entry '{media_id}'"})
    return to_schema(entry, runtime.settings.public_url)


@router.get(
    "",
    response_model=MediaEntryList,
    operation_id="findMediaLibraryEntries",
    summary="Find media library entries",
)
async def find_media_entries(
    principal: Annotated[Principal, Depends(require_scope(SCOPE_READ))],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    _single: Annotated[None, Depends(reject_repeated_query_parameters)],
    system_name: Annotated[
        str | None, Query(alias="systemName", min_length=1, max_length=255, pattern=NUL_FREE_PATTERN)
    ] = None,
    external_id: Annotated[
        str | None, Query(alias="externalId", min_length=1, max_length=255, pattern=NUL_FREE_PATTERN)
    ] = None,
    ids: Annotated[
        str | None,
        Query(
            max_length=MAX_IDS * (MAX_ID_LENGTH + 1),
            pattern=NUL_FREE_PATTERN,
            description=f"Comma-separated media ids (at most {MAX_IDS}); instead of systemName and "
            "externalId, not with them.",
        ),
    ] = None,
) -> MediaEntryList:
    """Entries by ``ids``, or the entry of ``systemName`` and ``externalId`` (SPEC.md: two lookups).

    Raises ValidationFailed naming ``ids`` when it comes with either key
    (which lookup the client meant is unknown, so neither is guessed), and
    naming the missing half of an incomplete key.
    """
    if ids is not None and (system_name is not None or external_id is not None):
        given = " and ".join(
            name
            for name, value in (("systemName", system_name), ("externalId", external_id))
            if value is not None
        )
        raise ValidationFailed(
            {"ids": f"cannot be combined with {given}: look up by ids, or by systemName and externalId"}
        )
    if ids is not None:
        wanted = [i for i in (part.strip() for part in ids.split(",")) if i]
        if not wanted or len(wanted) > MAX_IDS:
            raise ValidationFailed({"ids": f"must list 1 to {MAX_IDS} ids"})
        entries = await runtime.db.run_read(
            partial(repository.list_entries_by_ids, project_id=principal.project_id, ids=wanted)
        )
    else:
        if system_name is None or external_id is None:
            raise ValidationFailed(_missing_key_problem(system_name, external_id))
        entry = await runtime.db.run_read(
            partial(
                repository.get_entry_by_key,
                project_id=principal.project_id,
                system_name=system_name,
                external_id=external_id,
            )
        )
        entries = [entry] if entry else []
    public_url = runtime.settings.public_url
    return MediaEntryList(media_library_entries=[to_schema(e, public_url) for e in entries])


def _missing_key_problem(system_name: str | None, external_id: str | None) -> dict[str, str]:
    if system_name is not None:
        return {"externalId": "is required with systemName"}
    if external_id is not None:
        return {"systemName": "is required with externalId"}
    return {"query": "give systemName and externalId, or ids"}


_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# More digits than this name a position beyond any stored asset (and int() refuses 4300+ digits).
_MAX_POSITION_DIGITS = 18


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 10**_MAX_POSITION_DIGITS


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
        start = _position(first)
        end = min(_position(last) + 1, size) if last else size
        if last and _position(last) < start:
            return None
    else:
        start, end = max(0, size - _position(last)), size
    if start >= size or start >= end:
        raise RangeNotSatisfiable(size)
    return start, end


def if_none_match_matches(field_value: str, sha256: str) -> bool:
    """Whether an ``If-None-Match`` field value matches the asset whose ETag is ``"<sha256>"``.

    RFC 9110 §13.1.2: ``*`` matches any current representation; otherwise the
    value is a comma-separated list of entity tags compared with the weak
    comparison function (§8.8.3.2), so ``W/"<sha256>"`` matches as well as
    ``"<sha256>"``. A tag sent without its quotes is compared too, for clients
    that forget them. An unterminated quoted tag ends the list; nothing raises.
    Several field lines are joined with commas before the call (RFC 9110 §5.3).
    """
    if field_value.strip() == "*":
        return True
    return sha256 in _opaque_tags(field_value)


def _opaque_tags(field_value: str) -> list[str]:
    """The opaque tags of an entity-tag list, without ``W/`` and quotes."""
    tags: list[str] = []
    rest = field_value
    while rest := rest.lstrip(" \t,"):
        rest = rest.removeprefix("W/")
        if rest.startswith('"'):
            end = rest.find('"', 1)
            if end < 0:
                break
            tags.append(rest[1:end])
            rest = rest[end + 1 :]
        else:
            tag, _, rest = rest.partition(",")
            tags.append(tag.strip())
    return tags


class RangeNotSatisfiable(ApiError):
    status_code = 416

    def __init__(self, size: int) -> None:
        super().__init__(
            {"Range": f"outside the {size} bytes of the asset"}, headers={"Content-Range": f"bytes */{size}"}
        )


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


_ASSET_HEADERS = {
    "ETag": _header("The quoted SHA-256 of the bytes"),
    "Accept-Ranges": _header("`bytes`"),
    "Content-Disposition": _header("`inline` or, for active content, `attachment`, with the file name"),
    "X-Content-Type-Options": _header("`nosniff`"),
    "Cache-Control": _header("`private, max-age=300`"),
    "Content-Security-Policy": _header("Restrictive policy for SVG and HTML-like types"),
}
_BYTES = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
_ASSET_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The bytes, with the entry's MIME type",
        "content": _BYTES,
        "headers": _ASSET_HEADERS,
    },
    206: {
        "description": "The requested byte range (RFC 9110 §14)",
        "content": _BYTES,
        "headers": {**_ASSET_HEADERS, "Content-Range": _header("`bytes <first>-<last>/<size>`")},
    },
    304: {
        "description": "Not modified: If-None-Match is `*` or names the ETag (weak comparison)",
        "headers": _ASSET_HEADERS,
    },
    **error_responses(400, 404, 416, 503),
}


async def download_asset(
    media_id: MediaId,
    filename: Annotated[str, Path(description="Any name; the download's name comes from the entry.")],
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    range_header: Annotated[
        str | None, Header(alias="Range", description="One `bytes=` range (RFC 9110 §14.2).")
    ] = None,
    if_none_match: Annotated[
        str | None,
        Header(
            alias="If-None-Match",
            description='`*` or entity tags, weak ones included (`W/"<sha256>"`); 304 when one matches '
            "(RFC 9110 §13.1.2).",
        ),
    ] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    """The stored bytes; the media id in the path is the capability (128 random bits)."""
    entry = await runtime.db.run_read(partial(repository.get_entry_by_id, media_id=media_id))
    if entry is None:
        raise NotFound({"mediaId": f"no asset for '{media_id}'"})
    # Checked before any header is sent, so a lost blob is a clean error
    # rather than a 200 whose body breaks off.
    if await runtime.storage.size(entry.asset_key) is None:
        log.error("media.asset.missing", media_id=entry.id, key=entry.asset_key)
        raise NotFound({"asset": "the stored bytes of this entry are missing; import the file again"})
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
    if if_none_match is not None and if_none_match_matches(
        ", ".join(request.headers.getlist("if-none-match")), entry.sha256
    ):
        return Response(status_code=304, headers=headers)
    byte_range = None
    if range_header and (if_range is None or if_range == etag):
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


add_get_and_head_route(
    assets_router,
    "/assets/{mediaId}/{filename}",
    download_asset,
    operation="Asset",
    summary="Download an entry's bytes",
    head_summary="An entry's download headers",
    response_class=Response,
    responses=_ASSET_RESPONSES,
)
