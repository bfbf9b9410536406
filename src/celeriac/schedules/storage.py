"""Schedules as stored (RedBeat's JSON shapes) and as a ``beat_schedule`` entry holds them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celeriac.schedules.base import Schedule
from celeriac.schedules.cron import crontab
from celeriac.schedules.interval import schedule

_CRONTAB_KEYS = frozenset({"minute", "hour", "day_of_week", "day_of_month", "month_of_year"})
_INTERVAL_KEYS = frozenset({"every", "relative"})


def schedule_from_json(data: Mapping[str, Any]) -> Schedule:
    """The schedule ``to_json()`` stored as ``data``.

    A crontab missing a field reads it as ``'*'``, as ``crontab()`` does and as RedBeat reads
    its own. Raises ValueError naming the problem: not a mapping, no or an unknown
    ``"__type__"``, an unknown key, a missing or bad value.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"a stored schedule must be a mapping with '__type__', not {data!r}")
    kind = data.get("__type__")
    fields = {key: value for key, value in data.items() if key != "__type__"}
    if kind == "interval":
        _refuse_unknown("interval", fields, _INTERVAL_KEYS)
        return _interval(fields)
    if kind == "crontab":
        _refuse_unknown("crontab", fields, _CRONTAB_KEYS)
        return crontab(**fields)
    if kind == "solar":
        raise ValueError(
            f"stored schedule {dict(data)!r} is a solar schedule, which celeriac does not "
            "have: store a crontab in the place's zone instead"
        )
    raise ValueError(
        f"stored schedule {dict(data)!r} has '__type__' {kind!r}: expected 'interval' or 'crontab'"
    )


def as_schedule(value: object) -> Schedule:
    """What a ``beat_schedule`` entry's ``"schedule"`` holds, as a schedule.

    A number of seconds or a timedelta is an interval; a schedule (``schedule``,
    ``crontab``, or any object with ``next_run`` and ``to_json``) is taken as it is.
    Raises TypeError for anything else, ValueError for a zero or negative interval.
    """
    if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
        return schedule(value)
    if isinstance(value, Schedule):
        return value
    hint = ""
    if type(value).__module__.startswith("celery."):
        hint = f" (from celeriac.schedules import {type(value).__name__}, not Celery's)"
    raise TypeError(
        f"a beat_schedule entry's schedule is {value!r}: give a number of seconds, a "
        f"timedelta, or a schedule, crontab or object with next_run() and to_json(){hint}"
    )


def _interval(fields: Mapping[str, Any]) -> schedule:
    if "every" not in fields:
        raise ValueError(f"stored interval {dict(fields)!r} has no 'every' (seconds)")
    every, relative = fields["every"], fields.get("relative", False)
    if isinstance(every, bool) or not isinstance(every, int | float):
        raise ValueError(f"stored interval's 'every' is {every!r}: expected seconds (a number)")
    if not isinstance(relative, bool):
        raise ValueError(f"stored interval's 'relative' is {relative!r}: expected true or false")
    return schedule(every, relative=relative)


def _refuse_unknown(kind: str, fields: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"stored {kind} has unknown keys {', '.join(map(repr, unknown))}: it takes "
            f"{', '.join(sorted(known))}"
        )
