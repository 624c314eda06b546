"""Validation of the http(s) URLs a batch names (files and webhooks).

One set of rules for the API (a 400 naming the field) and the fetcher (a
redirect's target): an absolute ``http``/``https`` URL (RFC 3986 §4.3) whose
host is a DNS name or an IP literal, with a port in 1-65535, no user info
and no control characters. An IPv4 address must be written as four decimal
numbers (RFC 3986 §3.2.2 ``IPv4address``): the legacy forms that
``inet_aton`` and browsers (WHATWG URL) also read, such as ``0177.0.0.1``,
``0x7f.1``, ``127.1`` or ``2130706433``, or one in other digits that IDNA
maps to these (``①②⑦.0.0.1``), are refused rather than guessed; so is an
IPv6 zone (``[fe80::1%25eth0]``, RFC 6874). Spaces and non-ASCII characters in the path and
query are allowed; they are percent-encoded when fetched (RFC 3986 §2.1).
The check is plain string work, cheap enough for a 1000-file batch.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string

MAX_URL_LENGTH = 2048

# Characters that never belong in a URL as sent: C0 and C1 controls, DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# A host name after IDNA encoding: letters, digits, '-', '_' (seen in the
# wild) and dots; each label 1-63 characters, 253 in all (RFC 1035 §2.3.4).
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$"
)


def check_http_url(value: str) -> str | None:
    """The problem with ``value`` as an absolute http(s) URL, or None when it is one.

    Returns a phrase to follow the field's name ("must name a host").
    """
    if len(value) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if _CONTROL.search(value):
        return "must not contain control characters"
    scheme = _SCHEME.match(value)
    if (
        scheme is None
        or scheme.group(1).lower() not in ("http", "https")
        or value[scheme.end() :][:2] != "//"
    ):
        return "must be an absolute http or https URL"
    rest = value[scheme.end() + 2 :]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        return "must not contain credentials"
    return host_problem(authority)


IPV4_FORM_PROBLEM = (
    "must write an IPv4 address as four decimal numbers from 0 to 255 without leading zeros, "
    "such as 192.0.2.1"
)


@functools.lru_cache(maxsize=4096)
def host_problem(authority: str) -> str | None:
    """The problem with ``host[:port]`` (RFC 3986 §3.2.2-3.2.3), or None.

    The one host and port rule of the service: posted file and webhook URLs
    and every redirect hop pass it. Returns a phrase to follow the field's
    name. A host whose last label is a number (all digits, or ``0x`` and hex
    digits) is an IPv4 address to a browser or ``inet_aton`` (WHATWG URL
    "ends in a number"); it must then be a dotted-decimal address that
    ``ipaddress.IPv4Address`` reads, else ``IPV4_FORM_PROBLEM``. Cached: the
    files of a batch mostly share a few hosts (IDNA encoding was about a
    third of the time of a 1000-file POST).
    """
    host, port = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return "must name a valid host"
        host, port = authority[1:end], authority[end + 1 :]
        if port and not port.startswith(":"):
            return "must name a valid host"
        port = port[1:]
        if "%" in host:  # RFC 6874: a zone names an interface of the sender, no remote host
            return "must not name an IPv6 zone (the part after %)"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "must name a valid host"
    else:
        if ":" in authority:
            host, port = authority.rsplit(":", 1)
        if not host:
            return "must name a host"
        ascii_host = _ascii_host_name(host)
        if ascii_host is None:
            return "must name a valid host"
        # Non-ASCII digits ("①②⑦.0.0.1") become an address through IDNA's mapping: refused too.
        if _ends_in_number(ascii_host) and (not host.isascii() or not _is_dotted_decimal(ascii_host)):
            return IPV4_FORM_PROBLEM
    if port and (not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536):
        return "must have a port from 1 to 65535"
    return None


def _ascii_host_name(host: str) -> str | None:
    """``host`` in lower case after IDNA encoding, or None when it is no valid host name."""
    host = host.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return host if _HOST_NAME.match(host) else None


def _ends_in_number(host: str) -> bool:
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    if last.isdigit():
        return True
    return last[:2] == "0x" and all(c in string.hexdigits for c in last[2:])


def _is_dotted_decimal(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)  # four decimal parts; leading zeros refused since Python 3.9.5
    except ValueError:
        return False
    return True
