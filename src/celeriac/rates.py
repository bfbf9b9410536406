"""Rate limits as Celery writes them: ``"10/s"``, ``"100/m"``, ``"1000/h"``, or a number
(a numeric string too) per second; ``None``, ``0`` and ``"0"`` mean no limit.

:func:`parse_rate` turns one into a :class:`Rate` (``limit`` starts per ``period`` seconds),
the one type the task option, the settings, remote control and the worker's gate share; a
value that is none of these forms is a ValueError that names it, rather than a limit
silently read as none. :func:`check_rate_options` checks the options that go with a rate
(``rate_limit_scope``, ``rate_limit_key``, ``rate_limit_burst``) wherever they are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

#: Whose budget a limit is: each worker process's (Celery's meaning) or one shared by every
#: worker on the result store.
Scope = Literal["worker", "global"]
SCOPES: tuple[str, ...] = get_args(Scope)

#: The periods Celery's rate strings name, in seconds.
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: What the error for a bad rate lists.
ACCEPTED_FORMS = (
    '"N/s", "N/m" or "N/h" (N starts per second, minute or hour), a number (per second), '
    'or None / 0 / "0" for no limit'
)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` starts per ``period`` seconds (``text``: the value as written)."""

    limit: float
    period: float
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two starts when they are spread evenly (``period / limit``)."""
        return self.period / self.limit

    def __str__(self) -> str:
        return self.text


def parse_rate(value: Any) -> Rate | None:
    """The :class:`Rate` ``value`` writes, None for no limit; ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, Rate):
        return value
    if isinstance(value, bool):  # True is an int: reject it rather than read 1/s
        raise ValueError(f"bad rate limit {value!r}: use {ACCEPTED_FORMS}")
    if isinstance(value, int | float):
        return _rate(float(value), 1.0, _number_text(value), value)
    if not isinstance(value, str):
        raise ValueError(f"bad rate limit {value!r}: use {ACCEPTED_FORMS}")
    count, slash, unit = value.strip().partition("/")
    period = PERIODS.get(unit.strip() if slash else "s")
    try:
        limit = float(count)
    except ValueError:
        period = None
    if period is None:
        raise ValueError(f"bad rate limit {value!r}: use {ACCEPTED_FORMS}")
    return _rate(limit, period, value.strip(), value)


def _rate(limit: float, period: float, text: str, value: Any) -> Rate | None:
    if not math.isfinite(limit) or limit < 0:
        raise ValueError(
            f"bad rate limit {value!r}: the count must be a finite number >= 0; use"
            f" {ACCEPTED_FORMS}"
        )
    if limit == 0:
        return None
    return Rate(limit, period, text)


def _number_text(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_rate_options(
    where: str,
    rate_limit: Any = None,
    scope: Any = None,
    key: Any = None,
    burst: Any = None,
) -> None:
    """Raise ValueError, naming ``where`` (the option or setting), unless each value given
    (not None) is one celeriac can honour."""
    try:
        parse_rate(rate_limit)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"{where}: rate_limit_scope is {scope!r}: use 'worker' or 'global'")
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"{where}: rate_limit_key is {key!r}: use a non-empty string")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ValueError(f"{where}: rate_limit_burst is {burst!r}: use a whole number >= 1")
