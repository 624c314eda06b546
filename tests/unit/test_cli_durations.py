"""Durations on the command line (`gc --older-than`, `token create --expires-in`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import typer

from fileimport.cli import parse_duration


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h", timedelta(hours=1)),
        ("2w", timedelta(weeks=2)),
        # ISO 8601, as FILEIMPORT_BLOB_SWEEP_MIN_AGE and the other duration settings take it
        ("PT1H", timedelta(hours=1)),
        ("P30D", timedelta(days=30)),
        ("PT90S", timedelta(seconds=90)),
    ],
)
def test_durations_in_units_or_iso_8601(text: str, duration: timedelta) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["", "1", "h", "-PT1H", "P", "PTX", "1 h", "P100000000D", "99999999999w"])
def test_what_is_not_a_duration_is_a_bad_parameter(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)


@pytest.mark.parametrize(("text", "said"), [("-5d", "is negative"), ("0", "use a number and a unit")])
def test_a_bad_duration_names_its_option(text: str, said: str) -> None:
    """Before: "Invalid value: use a number and a unit", naming no option (fresh-user trial)."""
    with pytest.raises(typer.BadParameter, match=said) as raised:
        parse_duration(text, "--expires-in")
    assert raised.value.param_hint == "--expires-in"
