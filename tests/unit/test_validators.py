"""Property tests of the validators every request passes: URLs, metadata, whole import bodies.

Each validator answers with a problem (or None) for any input, never with an
exception: anything else would be a 500 for bad input, which SPEC.md rules out.
"""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fileimport.core.errors import ValidationFailed
from fileimport.core.urls import IPV4_FORM_PROBLEM, MAX_URL_LENGTH, check_http_url, host_problem
from fileimport.imports.schemas import ImportRequest
from fileimport.imports.service import validate_import_request
from fileimport.projects.config import (
    MediaKind,
    MediaTypeConfig,
    MetadataField,
    MetadataFieldType,
    ProjectConfig,
)

# -- strategies -------------------------------------------------------------------

# Strict JSON (RFC 8259): no NaN or Infinity, which the API refuses while parsing.
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

_label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?\Z")
# A name whose last label is all digits reads as an IPv4 address (WHATWG URL).
_top_label = st.from_regex(r"\A[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
domain_names = st.builds(
    lambda labels, top: ".".join([*labels, top]), st.lists(_label, max_size=3), _top_label
)
ipv4_literals = st.ip_addresses(v=4).map(str)
ipv6_literals = st.ip_addresses(v=6).map(lambda ip: f"[{ip.compressed}]")
hosts = domain_names | ipv4_literals | ipv6_literals
ports = st.none() | st.integers(min_value=1, max_value=65535)

# Path and query text as people write it: any printable character, spaces and
# non-ASCII letters included, plus well-formed percent-escapes. Excluded are
# the delimiters that would end the component, controls, and '%' on its own.
_free_text = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cs"),
        blacklist_characters="/?#%\\",
    ),
    max_size=20,
)
_escape = st.integers(min_value=0, max_value=255).map(lambda b: f"%{b:02X}")
_segment = st.lists(_free_text | _escape, max_size=3).map("".join)
paths = st.lists(_segment, max_size=5).map(lambda parts: "/" + "/".join(parts))
queries = st.none() | st.lists(_free_text | _escape, max_size=3).map("".join)
fragments = st.none() | _free_text


@st.composite
def http_urls(draw: st.DrawFn) -> str:
    """An absolute http(s) URL as a person would paste it, at most 2048 characters."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    port = draw(ports)
    url = f"{scheme}://{draw(hosts)}{'' if port is None else f':{port}'}{draw(paths)}"
    query = draw(queries)
    if query is not None:
        url += f"?{query}"
    fragment = draw(fragments)
    if fragment is not None:
        url += f"#{fragment}"
    assume(len(url) <= MAX_URL_LENGTH)
    return url


CONTROL_CHARACTERS = [chr(c) for c in range(0x20)] + ["\x7f"]


# -- check_http_url -----------------------------------------------------------------


@given(st.text(max_size=3000))
@example("http://")
@example("http://[::1")
@example("http://exa mple.com/")
@example("http://h:99999999999/")
@example("http://[fe80::1%25eth0]/")
@example("https://xn--/")
@example("http://\u0080/")
@example("http://example.com/\ud800.jpg")
def test_check_http_url_answers_any_text(value: str) -> None:
    problem = check_http_url(value)
    assert problem is None or (isinstance(problem, str) and problem)


@given(st.text(max_size=60).map(lambda rest: "http://" + rest))
def test_check_http_url_answers_any_text_after_a_scheme(value: str) -> None:
    problem = check_http_url(value)
    assert problem is None or (isinstance(problem, str) and problem)


@given(http_urls())
@example("https://example.com/Bilder/Gr\u00fc\u00dfe aus K\u00f6ln.jpg")
@example("http://example.com/\u65e5\u672c\u8a9e/\u5199\u771f.png?size=large#top")
@example("http://127.0.0.1:8000/a%20b")
@example("http://[::1]/")
def test_absolute_http_urls_are_accepted(url: str) -> None:
    assert check_http_url(url) is None


@given(
    st.sampled_from(["", "//", "/", "example.com/", "www.", "./", "../", "?q=", "#"]).flatmap(
        lambda prefix: st.builds(lambda rest: prefix + rest, _free_text)
    )
)
def test_urls_without_scheme_are_rejected(value: str) -> None:
    assert check_http_url(value) is not None


@given(
    st.sampled_from(["ftp", "file", "gopher", "javascript", "data", "ws", "wss", "httpx", "mailto", "s3"]),
    hosts,
    paths,
)
def test_other_schemes_are_rejected(scheme: str, host: str, path: str) -> None:
    assert check_http_url(f"{scheme}://{host}{path}") is not None


@given(st.sampled_from(["http:///", "https:///", "http://:80/", "http://@/", "http:/", "http:"]), paths)
def test_urls_without_host_are_rejected(start: str, path: str) -> None:
    assert check_http_url(start + path.lstrip("/")) is not None


@given(http_urls(), st.integers(min_value=1, max_value=3000))
def test_urls_over_2048_characters_are_rejected(url: str, extra: int) -> None:
    long_url = url.split("#", 1)[0] + ("" if "?" in url else "?") + "x" * (MAX_URL_LENGTH - len(url) + extra)
    assume(len(long_url) > MAX_URL_LENGTH)
    assert check_http_url(long_url) == f"must be at most {MAX_URL_LENGTH} characters"


@given(
    st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=%", min_size=1, max_size=10),
    st.none() | st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=%:", max_size=10),
    hosts,
    paths,
)
def test_urls_with_credentials_are_rejected(user: str, password: str | None, host: str, path: str) -> None:
    userinfo = user if password is None else f"{user}:{password}"
    assert check_http_url(f"http://{userinfo}@{host}{path}") == "must not contain credentials"


@given(http_urls(), st.sampled_from(CONTROL_CHARACTERS), st.data())
def test_urls_with_control_characters_are_rejected(url: str, control: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(url)))
    assert check_http_url(url[:position] + control + url[position:]) == "must not contain control characters"


@pytest.mark.parametrize("control", ["\x85", "\x9b"])
def test_urls_with_c1_control_characters_are_rejected(control: str) -> None:
    assert check_http_url(f"http://example.com/a{control}b.jpg") is not None


@pytest.mark.parametrize(
    "url", ["http://exa mple.com/a.jpg", "http://ex!ample.com/a.jpg", "http://example.com:99999/a.jpg"]
)
def test_urls_the_fetcher_would_refuse_are_rejected(url: str) -> None:
    assert check_http_url(url) is not None


@pytest.mark.parametrize(
    "host",
    [
        "0177.0.0.1",
        "0x7f.1",
        "0x7F.0.0.1",
        "2130706433",
        "0x7f000001",
        "017700000001",
        "127.1",
        "127.0.1",
        "127.0.0.1.",
        "01.2.3.4",
        "256.1.1.1",
        "1.2.3.4.5",
        "example.123",
        "example.0x1f",
        "0x",
        "\uff11\uff12\uff17\uff0e\uff11",
    ],
)
def test_ipv4_addresses_in_other_forms_are_rejected(host: str) -> None:
    """Browsers and inet_aton read these as IPv4 addresses; only a.b.c.d in decimal is taken."""
    assert check_http_url(f"http://{host}/cat.jpg") == IPV4_FORM_PROBLEM
    assert check_http_url(f"https://{host}:8443/cat.jpg") == IPV4_FORM_PROBLEM
    assert host_problem(host) == IPV4_FORM_PROBLEM


@pytest.mark.parametrize("host", ["a.0xg", "0xdead.example", "x1.example", "example.com.", "123.example"])
def test_names_that_do_not_end_in_a_number_are_host_names(host: str) -> None:
    assert check_http_url(f"http://{host}/cat.jpg") is None


def _legacy_ipv4_forms(ip: ipaddress.IPv4Address) -> list[str]:
    octets = list(ip.packed)
    return [
        str(int(ip)),
        hex(int(ip)),
        ".".join(f"0{octet:o}" for octet in octets),
        ".".join(hex(octet) for octet in octets),
        f"{octets[0]}.{octets[1]}.{octets[2] * 256 + octets[3]}",
        f"{octets[0]}.{int.from_bytes(ip.packed[1:], 'big')}",
    ]


@given(st.ip_addresses(v=4))
def test_every_ipv4_address_is_taken_only_in_dotted_decimal(ip: ipaddress.IPv4Address) -> None:
    assert check_http_url(f"http://{ip}/") is None
    for form in _legacy_ipv4_forms(ip):
        assert check_http_url(f"http://{form}/") == IPV4_FORM_PROBLEM, form


# -- metadata -----------------------------------------------------------------------

metadata_fields = st.builds(
    lambda handle, kind, required, max_length: MetadataField.model_validate(
        {"handle": handle, "type": kind, "required": required, "maxLength": max_length}
    ),
    st.text(string.ascii_lowercase, min_size=1, max_size=6),
    st.sampled_from(list(MetadataFieldType)),
    st.booleans(),
    st.none() | st.integers(min_value=1, max_value=8),
)


def valid_value(field: MetadataField) -> st.SearchStrategy[Any]:
    """Values ``field`` must accept."""
    limit = field.max_length
    match field.type:
        case MetadataFieldType.TEXT:
            return st.text(max_size=limit if limit is not None else 20)
        case MetadataFieldType.NUMBER:
            return st.integers() | st.floats(allow_nan=False, allow_infinity=False)
        case MetadataFieldType.BOOLEAN:
            return st.booleans()
        case MetadataFieldType.DATE:
            return st.dates().map(str) | st.datetimes().map(lambda d: d.isoformat() + "Z")
        case MetadataFieldType.LIST:
            return st.lists(json_values, max_size=limit if limit is not None else 4)
    raise AssertionError(field.type)


@given(metadata_fields, json_values)
def test_metadata_field_check_answers_any_json_value(field: MetadataField, value: Any) -> None:
    problem = field.check(value)
    assert problem is None or (isinstance(problem, str) and problem)
    match field.type:
        case MetadataFieldType.TEXT:
            fits = isinstance(value, str) and (field.max_length is None or len(value) <= field.max_length)
            assert (problem is None) == fits
        case MetadataFieldType.NUMBER:
            assert (problem is None) == (isinstance(value, int | float) and not isinstance(value, bool))
        case MetadataFieldType.BOOLEAN:
            assert (problem is None) == isinstance(value, bool)
        case MetadataFieldType.LIST:
            fits = isinstance(value, list) and (field.max_length is None or len(value) <= field.max_length)
            assert (problem is None) == fits
        case MetadataFieldType.DATE:
            if not isinstance(value, str):
                assert problem is not None


@given(metadata_fields, st.data())
def test_metadata_field_accepts_its_valid_values(field: MetadataField, data: st.DataObject) -> None:
    assert field.check(data.draw(valid_value(field))) is None


@given(
    st.integers(min_value=1, max_value=50).flatmap(
        lambda limit: st.tuples(st.just(limit), st.text(min_size=limit + 1, max_size=limit + 20))
    )
)
def test_text_over_max_length_is_a_problem(limit_and_text: tuple[int, str]) -> None:
    limit, text = limit_and_text
    field = MetadataField.model_validate({"handle": "title", "maxLength": limit})
    assert field.check(text) == f"must be at most {limit} characters"
    assert field.check(text[:limit]) is None


media_types = st.builds(
    lambda fields: MediaTypeConfig(
        handle="image",
        type=MediaKind.IMAGE,
        max_file_size=1000,
        metadata=tuple({f.handle: f for f in fields}.values()),
    ),
    st.lists(metadata_fields, max_size=5),
)


@given(
    media_types,
    st.dictionaries(st.text(max_size=6) | st.text(string.ascii_lowercase, max_size=6), json_values),
)
def test_metadata_problems_answers_any_json_object(
    media_type: MediaTypeConfig, metadata: dict[str, Any]
) -> None:
    problems = media_type.metadata_problems(metadata)
    fields = {f.handle: f for f in media_type.metadata}
    assert all(isinstance(problem, str) and problem for problem in problems.values())
    for key, value in metadata.items():
        if key not in fields:
            assert problems[key] == "is not a metadata field of media type 'image'"
        elif value is not None and fields[key].check(value) is not None:
            assert key in problems
    for handle, field in fields.items():
        if field.required and metadata.get(handle) is None:
            assert problems[handle] == "is required by media type 'image'"
        elif field.required and isinstance(metadata[handle], str) and not metadata[handle].strip():
            assert problems[handle].startswith("is required by media type 'image'")
    assert set(problems) <= set(metadata) | {f.handle for f in media_type.metadata if f.required}


@given(media_types, st.data())
def test_valid_metadata_has_no_problems(media_type: MediaTypeConfig, data: st.DataObject) -> None:
    metadata = {}
    for field in media_type.metadata:
        if field.required:
            metadata[field.handle] = data.draw(
                valid_value(field).filter(lambda v: not isinstance(v, str) or bool(v.strip()))
            )
        elif data.draw(st.booleans()):
            metadata[field.handle] = data.draw(valid_value(field))
    assert media_type.metadata_problems(metadata) == {}


# -- whole import requests --------------------------------------------------------------

CONFIG = ProjectConfig(
    media_types=(
        MediaTypeConfig.model_validate(
            {
                "handle": "image",
                "type": "mediaImage",
                "maxFileSize": "1MB",
                "metadata": [
                    {"handle": "title", "type": "text", "required": True, "maxLength": 10},
                    {"handle": "rank", "type": "number"},
                    {"handle": "shot", "type": "date"},
                    {"handle": "tags", "type": "list", "maxLength": 3},
                    {"handle": "approved", "type": "boolean"},
                ],
            }
        ),
        MediaTypeConfig.model_validate({"handle": "file", "type": "mediaFile", "maxFileSize": "1MB"}),
    )
)
MAX_BATCH_FILES = 3
INVISIBLE_MARKS = "\xad\u061c\u115f\u1160\u180e\u200b\u200e\u200f\u2028\u2029\u2060\u2061\u2062\u2063\u2064\u3164\ufeff\uffa0"


metadata_keys = st.sampled_from(
    ["title", "rank", "shot", "tags", "approved", "caption", "nope", "²", "1.5"]
) | st.text(max_size=6)
file_specs = st.fixed_dictionaries(
    {},
    optional={
        "url": http_urls() | st.text(max_size=30) | json_values,
        "id": st.sampled_from(["a", "b", ""]) | st.text(max_size=4) | json_values,
        "fileName": st.text(max_size=5) | json_values,
        "metadata": st.dictionaries(metadata_keys, json_values, max_size=4) | json_values,
        "mediaType": st.sampled_from(["image", "file", "video"]) | json_values,
        "extra": json_values,
    },
)
import_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "systemName": st.text(max_size=8) | json_values,
            "webhook": http_urls() | json_values,
            "context": st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values,
            "files": st.lists(file_specs | json_values, max_size=MAX_BATCH_FILES + 1) | json_values,
            "extra": json_values,
        },
    )
    | json_values
)


def names_a_place(data: Any, segments: list[str]) -> bool:
    """Whether the dotted path ``segments`` leads into ``data`` (a missing field counts, in its object).

    Object keys may themselves hold dots, so every split is tried.
    """
    if not segments:
        return True
    if isinstance(data, list):
        head = segments[0]
        return head.isdecimal() and int(head) < len(data) and names_a_place(data[int(head)], segments[1:])
    if isinstance(data, dict):
        for n in range(len(segments), 0, -1):
            key = ".".join(segments[:n])
            if key in data and names_a_place(data[key], segments[n:]):
                return True
        return len(segments) == 1
    return False


def validation_outcome(data: Any) -> ImportRequest | ValidationFailed:
    try:
        return validate_import_request(data, CONFIG, MAX_BATCH_FILES)
    except ValidationFailed as exc:
        return exc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(import_bodies)
@example({"systemName": "s", "files": [{"url": "http://h/a", "id": "a", "fileName": "a", "metadata": {}}]})
@example(
    {"systemName": "s", "files": [{"url": "http://h/a", "id": "a", "fileName": "a", "metadata": {"x": 1}}]}
)
@example({"": [["\x00"]]})
def test_validate_import_request_answers_any_json_body(data: Any) -> None:
    request = validation_outcome(data)
    if isinstance(request, ValidationFailed):
        assert request.status_code == 400
        assert request.details
        for path, problem in request.details.items():
            assert isinstance(path, str)
            assert path, request.details
            assert isinstance(problem, str)
            assert problem, request.details
            assert path == "body" or names_a_place(data, path.split(".")), (path, data)
        return
    assert isinstance(request, ImportRequest)
    assert 1 <= len(request.files) <= MAX_BATCH_FILES
    assert len({f.id for f in request.files}) == len(request.files)
    for spec in request.files:
        assert check_http_url(spec.url) is None
        media_type = CONFIG.media_type(spec.media_type) if spec.media_type else None
        if media_type is not None:
            assert media_type.metadata_problems(spec.metadata) == {}


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "url": http_urls(),
                "id": st.sampled_from(["a", "b", "c"]),
                # Any name the API accepts: not blank, no bidi embedding/override/isolate, no invisible mark.
                "fileName": st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=5)
                .filter(str.strip)
                .filter(
                    lambda name: (
                        not any(
                            0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 or c in INVISIBLE_MARKS
                            for c in name
                        )
                    )
                ),
                "metadata": st.just({"title": "ok"}),
                "mediaType": st.just("image"),
            }
        ),
        min_size=1,
        max_size=MAX_BATCH_FILES,
    )
)
def test_duplicate_ids_are_named_by_path(files: list[dict[str, Any]]) -> None:
    body = {"systemName": "s", "files": files}
    ids = [f["id"] for f in files]
    if len(set(ids)) == len(ids):
        assert len(validate_import_request(body, CONFIG, MAX_BATCH_FILES).files) == len(files)
        return
    with pytest.raises(ValidationFailed) as caught:
        validate_import_request(body, CONFIG, MAX_BATCH_FILES)
    duplicates = {f"files.{i}.id" for i, id_ in enumerate(ids) if id_ in ids[:i]}
    assert set(caught.value.details) == duplicates


@pytest.mark.parametrize("key", ["²", "¹.2", "٣", "9" * 5000])
def test_metadata_keys_that_look_like_numbers_are_validation_problems(key: str) -> None:
    # Problem paths are sorted with list positions as numbers: '²' is a digit
    # that int() refuses, and must not turn a 400 into a 500.
    body = {
        "systemName": "s",
        "files": [{"url": "http://h/a", "id": "a", "fileName": "a", "metadata": {key: 1}}],
    }
    with pytest.raises(ValidationFailed) as caught:
        validate_import_request(body, CONFIG, MAX_BATCH_FILES)
    assert f"files.0.metadata.{key}" in caught.value.details


def test_without_a_media_type_metadata_is_refused_at_once_only_when_no_type_takes_it() -> None:
    # The type is chosen from the bytes after the download; until then a value
    # one type takes must not be refused for another type's rule.
    config = ProjectConfig(
        media_types=(
            MediaTypeConfig(
                handle="image",
                type=MediaKind.IMAGE,
                max_file_size=1000,
                metadata=(MetadataField(handle="title", maxLength=5),),
            ),
            MediaTypeConfig(
                handle="file",
                type=MediaKind.FILE,
                max_file_size=1000,
                metadata=(MetadataField(handle="title", maxLength=10),),
            ),
        )
    )

    def problems(metadata: dict[str, Any]) -> dict[str, str]:
        body = {
            "systemName": "s",
            "files": [{"url": "http://h/a", "id": "a", "fileName": "a", "metadata": metadata}],
        }
        try:
            validate_import_request(body, config, MAX_BATCH_FILES)
        except ValidationFailed as exc:
            return dict(exc.details)
        return {}

    assert problems({"title": "eight ch"}) == {}  # too long for an image, fine for a file
    assert problems({"title": "eleven char"}) == {"files.0.metadata.title": "must be at most 5 characters"}
    assert problems({"caption": "x"}) == {
        "files.0.metadata.caption": "is not a metadata field of any media type"
    }
    assert problems({"title": None}) == {}


def test_checks_for_a_new_configuration_do_not_stop_a_stored_one_from_loading() -> None:
    # Stored before the checks existed: the project's imports must go on.
    stored = {
        "mediaTypes": [{"handle": "file", "type": "mediaFile", "maxFileSize": 0, "allowedMimeTypes": ["x"]}]
    }
    assert ProjectConfig.model_validate(stored).media_types[0].max_file_size == 0
    with pytest.raises(ValidationError) as caught:
        ProjectConfig.for_new_project(stored)
    assert {tuple(e["loc"]) for e in caught.value.errors()} >= {
        ("mediaTypes", 0, "maxFileSize"),
        ("mediaTypes", 0, "allowedMimeTypes"),
    }


@pytest.mark.parametrize(
    "pattern", ["image/png", "image/*", "*/*", "*", "application/vnd.api+json", "audio/x-wav"]
)
def test_mime_types_and_patterns_of_a_new_configuration(pattern: str) -> None:
    config = {
        "mediaTypes": [{"handle": "f", "type": "mediaFile", "maxFileSize": 1, "allowedMimeTypes": [pattern]}]
    }
    assert ProjectConfig.for_new_project(config).media_types[0].allowed_mime_types == (pattern,)
