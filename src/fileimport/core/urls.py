"""Validation of the http(s) URLs a batch names (files and webhooks)."""

from __future__ import annotations

import httpx2

MAX_URL_LENGTH = 2048


def check_http_url(value: str) -> str | None:
    """The problem with ``value`` as an absolute http(s) URL, or None when it is one.

    Spaces and non-ASCII characters in the path are allowed (they are
    percent-encoded when fetched, RFC 3986 §2.1); user info, control
    characters and hosts that are not valid names or addresses are not.
    """
    if len(value) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "must not contain control characters"
    try:
        url = httpx2.URL(value)
    except (httpx2.InvalidURL, ValueError, TypeError):
        return "must be an absolute http or https URL"
    if url.scheme not in ("http", "https"):
        return "must be an absolute http or https URL"
    if not url.host:
        return "must name a host"
    if url.userinfo:
        return "must not contain credentials"
    return None
