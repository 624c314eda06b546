"""``If-None-Match`` on asset downloads (RFC 9110 §13.1.2): weak comparison, ``*``, odd input never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileimport.media.routes import if_none_match_matches

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(
    "value",
    [f'"{SHA}"', f'W/"{SHA}"', "*", " * ", f'"a", W/"{SHA}"', f'W/"a",W/"{SHA}",', SHA, f'"a,b", "{SHA}"'],
)
def test_matches(value: str) -> None:
    assert if_none_match_matches(value, SHA)


@pytest.mark.parametrize(
    "value", ["", ",", "W/", '"a"', f'"{SHA}', f'"x{SHA}"', f'w/"{SHA}"', '*, "a"', f'"a", "{SHA[:-1]}"']
)
def test_does_not_match(value: str) -> None:
    assert not if_none_match_matches(value, SHA)


@given(st.text(max_size=200))
def test_any_text_is_answered(value: str) -> None:
    assert isinstance(if_none_match_matches(value, SHA), bool)
