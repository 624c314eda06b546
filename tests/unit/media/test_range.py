"""``Range`` headers of asset downloads (RFC 9110 §14): odd input is a full response or 416, never a 500."""

from __future__ import annotations

import pytest

from fileimport.media.routes import RangeNotSatisfiable, parse_range

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 100)),
        ("bytes=900-", (900, 1000)),
        ("bytes=-100", (900, 1000)),
        ("bytes=990-5000", (990, 1000)),
        ("bytes=0-" + "9" * 5000, (0, 1000)),
        ("bytes=-" + "9" * 5000, (0, 1000)),
        (" bytes=1-1 ", (1, 2)),
    ],
)
def test_satisfiable_ranges(header: str, expected: tuple[int, int]) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=",
        "bytes=-",
        "bytes=5-3",
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=\u0661-\u0662",
        "bytes=\u00b9-\u00b2",
        "bytes=0x10-",
        "",
    ],
)
def test_malformed_or_multiple_ranges_send_everything(header: str) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=" + "9" * 5000 + "-", "bytes=-0"])
def test_ranges_outside_the_asset_are_416(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, SIZE)
    assert raised.value.headers == {"Content-Range": f"bytes */{SIZE}"}
