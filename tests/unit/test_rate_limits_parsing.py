"""Celery's rate forms read by :func:`celeriac.rates.parse_rate`."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac.rates import Rate, parse_rate


@pytest.mark.parametrize(
    ("value", "limit", "period", "text"),
    [
        ("10/s", 10.0, 1.0, "10/s"),
        ("100/m", 100.0, 60.0, "100/m"),
        ("1000/h", 1000.0, 3600.0, "1000/h"),
        (" 2.5/m ", 2.5, 60.0, "2.5/m"),
        ("5", 5.0, 1.0, "5"),
        ("0.5", 0.5, 1.0, "0.5"),
        (3, 3.0, 1.0, "3"),
        (0.25, 0.25, 1.0, "0.25"),
    ],
)
def test_celerys_forms_are_read(value: Any, limit: float, period: float, text: str) -> None:
    assert parse_rate(value) == Rate(limit, period, text)


def test_the_interval_is_the_period_over_the_limit() -> None:
    rate = parse_rate("10/m")
    assert rate is not None and rate.interval == 6.0
    assert str(rate) == "10/m"


@pytest.mark.parametrize("value", [None, 0, 0.0, "0", "0/m", " 0 "])
def test_none_and_zero_mean_no_limit(value: Any) -> None:
    assert parse_rate(value) is None


@pytest.mark.parametrize(
    "value", ["10/d", "ten/s", "", "/s", "10/", "-1/s", -3, "nan", "inf/s", True, [10], "1/s/s"]
)
def test_a_bad_rate_is_an_error_naming_it_and_the_forms(value: Any) -> None:
    with pytest.raises(ValueError, match="bad rate limit") as caught:
        parse_rate(value)
    assert repr(value) in str(caught.value)
    assert '"N/s", "N/m" or "N/h"' in str(caught.value)


def test_a_rate_passes_through() -> None:
    rate = Rate(1.0, 1.0, "1/s")
    assert parse_rate(rate) is rate
