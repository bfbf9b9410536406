"""``schedule``: a run every fixed period, as Celery's ``schedule(run_every, relative)``."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from celeriac.schedules.base import as_utc

#: The grid relative intervals are laid on: a multiple of a period that divides a day falls
#: on the same clock times every UTC day, because the epoch is a UTC midnight.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class schedule:  # lower case: Celery's name, which beat_schedule entries are written with
    """A run every ``run_every`` (seconds, or a timedelta), measured in real (UTC) time.

    Each slot is the previous *scheduled* slot plus the period: the scheduler hands back the
    slot it scheduled, not the moment it sent, so slots never drift. A period is real
    time, so an hourly interval stays hourly across a daylight-saving change.

    ``relative=True`` lays the slots on a fixed grid instead: the multiples of the period
    counted from the Unix epoch, in UTC. For a period that divides a day that is the UTC
    clock's multiples (every 15 minutes: :00, :15, :30, :45; every 6 hours: 00:00, 06:00,
    12:00, 18:00 UTC); for any other period (7 minutes, 2 days) it is still one grid that
    does not depend on when a scheduler started. Celery differs: it rounds the previous run
    down to the period's largest unit (a 15-minute period to the minute, a 2-hour one to the
    hour) and adds the period, which agrees with the grid for a period of one unit (a
    minute, an hour, a day) but leaves a quarter hour wherever the first run fell.
    """

    def __init__(self, run_every: float | timedelta, relative: bool = False) -> None:
        self.run_every: timedelta = _period(run_every)
        self.relative = relative

    @property
    def seconds(self) -> float:
        """The period in seconds."""
        return self.run_every.total_seconds()

    def next_run(self, after: datetime, zone: tzinfo) -> datetime | None:
        """The next slot: ``after`` plus the period, or the grid's next multiple if relative.

        ``zone`` is not read: an interval is real time whatever the zone.
        """
        moment = as_utc(after)
        try:
            if not self.relative:
                return moment + self.run_every
            period = self.run_every // _MICROSECOND
            elapsed = (moment - EPOCH) // _MICROSECOND
            return EPOCH + (elapsed // period + 1) * period * _MICROSECOND
        except OverflowError:  # past year 9999
            return None

    def to_json(self) -> dict[str, Any]:
        """RedBeat's interval form: ``{"__type__": "interval", "every": s, "relative": b}``."""
        return {"__type__": "interval", "every": self.seconds, "relative": self.relative}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, schedule):
            return NotImplemented
        return (self.run_every, self.relative) == (other.run_every, other.relative)

    def __hash__(self) -> int:
        return hash((schedule, self.run_every, self.relative))

    def __repr__(self) -> str:
        relative = ", relative=True" if self.relative else ""
        return f"schedule(run_every={self.seconds!r}{relative})"


def _period(run_every: object) -> timedelta:
    """``run_every`` as a positive timedelta (whole microseconds, as timedelta keeps them)."""
    if isinstance(run_every, timedelta):
        period = run_every
    elif isinstance(run_every, int | float) and not isinstance(run_every, bool):
        if not math.isfinite(run_every):
            raise ValueError(f"schedule run_every={run_every!r}: give a finite number of seconds")
        period = timedelta(seconds=run_every)
    else:
        raise TypeError(
            f"schedule run_every={run_every!r}: give a number of seconds or a timedelta"
        )
    if period <= timedelta(0):
        raise ValueError(
            f"schedule run_every={run_every!r}: the period must be positive "
            "(at least one microsecond)"
        )
    return period
