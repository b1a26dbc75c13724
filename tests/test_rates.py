"""Rates as people write them (protocol.rates)."""

from __future__ import annotations

import pytest

from protocol.rates import parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/s", (100, 1.0)),
        ("10/min", (10, 60.0)),
        ("500/5m", (500, 300.0)),
        ("2/h", (2, 3600.0)),
        ("1/day", (1, 86400.0)),
        (" 3 / 1.5s ", (3, 1.5)),
        ("7/SEC", (7, 1.0)),
    ],
)
def test_rates_people_write(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("fast", "expected COUNT/PERIOD"),
        ("10", "expected COUNT/PERIOD"),
        ("10/fortnight", "expected COUNT/PERIOD"),
        ("-1/s", "expected COUNT/PERIOD"),
        ("0/s", "count must be in 1..1000000"),
        ("1/0s", "period must be more than 0"),
        ("1/8day", "at most 7 days"),
    ],
)
def test_bad_rates_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_rate(text)
