"""``crontab``: runs at the wall-clock times its five fields match, read in the app's zone.

The search for the next run walks the calendar, not the clock: the months the crontab
matches, the days of those months, then the hours and minutes of a matching day, each level
skipped whole when all of it is already past. A run a year away costs a few hundred steps,
not half a million minutes. Daylight-saving time is handled as the package docstring
(``celeriac.schedules``) lays down; ``wallclock`` places each wall time in UTC.
"""

from __future__ import annotations

import bisect
import calendar
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from celeriac.schedules.base import as_utc
from celeriac.schedules.fields import (
    DAY_OF_MONTH,
    DAY_OF_WEEK,
    HOUR,
    MINUTE,
    MONTH_OF_YEAR,
    FieldSpec,
)
from celeriac.schedules.wallclock import Placement, earliest, latest, place

#: How far ahead a run is looked for. The Gregorian calendar repeats every 400 years, so a
#: date that falls on a matching weekday once does so within any 400 years (February 29th
#: on a Monday can be 40 years apart); a crontab that matches no date at all is known
#: without a search (see ``crontab.can_match``).
SEARCH_YEARS = 400
#: The longest each month can be (February in a leap year).
_LONGEST_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ONE_DAY = timedelta(days=1)
_ONE_HOUR = timedelta(hours=1)
_ONE_MINUTE = timedelta(minutes=1)
_ALL_HOURS = frozenset(range(24))
#: The fields in the order of crontab()'s arguments (not cron's: see from_string).
_FIELDS = (MINUTE, HOUR, DAY_OF_WEEK, DAY_OF_MONTH, MONTH_OF_YEAR)


class crontab:  # lower case: Celery's name, which beat_schedule entries are written with
    """Runs at the times all five fields match, as cron and Celery read them.

    ``day_of_month`` and ``day_of_week`` must *both* match (AND), as in Celery: a crontab
    with ``day_of_month=13, day_of_week='fri'`` runs on Fridays the 13th only (cron would
    run on every 13th and every Friday). Fields take cron's forms (``'*/15'``, ``'1-5'``,
    ``'1,3,5'``, ``'1-30/5'``, ``'mon-fri'``, ``'jan-mar'``), ints, or sets of ints; see
    ``celeriac.schedules.fields``. The attributes ``minute``, ``hour``, ``day_of_week``
    (Sunday = 0), ``day_of_month`` and ``month_of_year`` hold the values each matches.
    """

    def __init__(
        self,
        minute: FieldSpec = "*",
        hour: FieldSpec = "*",
        day_of_week: FieldSpec = "*",
        day_of_month: FieldSpec = "*",
        month_of_year: FieldSpec = "*",
    ) -> None:
        specs = (minute, hour, day_of_week, day_of_month, month_of_year)
        parsed = [field.parse(spec) for field, spec in zip(_FIELDS, specs, strict=True)]
        self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year = (
            values for values, _ in parsed
        )
        #: Each field as written (ints and sets as comma-separated text): shown and stored.
        self.texts = {field.name: text for field, (_, text) in zip(_FIELDS, parsed, strict=True)}
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)
        self._days = sorted(self.day_of_month)
        self._months = sorted(self.month_of_year)

    @classmethod
    def from_string(cls, line: str) -> crontab:
        """A crontab from a cron line: ``minute hour day_of_month month_of_year day_of_week``."""
        fields = line.split()
        if len(fields) != 5:
            raise ValueError(
                f"crontab line {line!r} has {len(fields)} fields: write five, "
                "'minute hour day_of_month month_of_year day_of_week' ('*/5 9-17 * * mon-fri')"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    @property
    def every_hour(self) -> bool:
        """The hour field matches every hour: DST skips missing times and repeats twice-shown
        ones, instead of moving them (see the package docstring)."""
        return self.hour == _ALL_HOURS

    @property
    def can_match(self) -> bool:
        """Some day of some year matches (not so for ``day_of_month=31, month_of_year=2``)."""
        return any(day <= _LONGEST_MONTH[month] for month in self._months for day in self._days)

    def next_run(self, after: datetime, zone: tzinfo) -> datetime | None:
        """The first run strictly after ``after``, in UTC; None if no date ever matches."""
        moment = as_utc(after)
        if not self.can_match:
            return None
        best: datetime | None = None
        # The day before: a zone whose clock goes back across midnight shows yesterday's
        # times again today.
        start = moment.astimezone(zone).date() - _ONE_DAY
        for day in self._matching_days(start):
            if best is not None and earliest(_midnight(day), zone) >= best:
                break  # this day and every later one start after the run found
            found = self._first_on(day, moment, zone)
            if found is not None and (best is None or found < best):
                best = found
        return best

    def _matching_days(self, start: date) -> Iterator[date]:
        """The dates from ``start`` on that the month, day-of-month and weekday fields match."""
        for year in range(start.year, min(start.year + SEARCH_YEARS + 1, date.max.year)):
            for month in self._months:
                if (year, month) < (start.year, start.month):
                    continue
                length = calendar.monthrange(year, month)[1]
                for day_of_month in self._days:
                    if day_of_month > length:
                        break
                    day = date(year, month, day_of_month)
                    if day >= start and day.isoweekday() % 7 in self.day_of_week:
                        yield day

    def _first_on(self, day: date, after: datetime, zone: tzinfo) -> datetime | None:
        """The first run on ``day``'s wall clock strictly after ``after``, if any.

        Wall times are taken in order, and each is placed no earlier than the one before
        (a repeated time's second instant aside), so the first placed past the best run
        found ends the search.
        """
        if latest(_midnight(day + _ONE_DAY), zone) <= after:
            return None  # the whole day is past
        best: datetime | None = None
        # The hours wholly past come first (no time of an earlier hour is placed later):
        # bisection skips them with a few placements.
        first_hour = bisect.bisect_left(
            self._hours, True, key=lambda hour: latest(_hour_end(day, hour), zone) > after
        )
        for hour in self._hours[first_hour:]:
            start = datetime.combine(day, time(hour))
            begin = place(start, zone)
            if best is not None and begin.first >= best:
                return best
            if _plain(begin, place(start + _ONE_HOUR, zone)):
                run = self._first_in_plain_hour(begin.first, after)
                if run is not None:  # every later time is placed after this hour
                    return run if best is None else min(best, run)
                continue
            for minute in self._minutes:
                placed = place(start.replace(minute=minute), zone)
                if best is not None and placed.first >= best:
                    return best
                for run in self._runs(placed):
                    if run > after and (best is None or run < best):
                        best = run
        return best

    def _first_in_plain_hour(self, begin: datetime, after: datetime) -> datetime | None:
        """The first matching minute after ``after`` of an hour starting at ``begin``, in which
        the clock neither jumps nor goes back: found by bisection, not by placing each."""
        past = (after - begin) // _ONE_MINUTE  # minutes of the hour at or before ``after``
        index = bisect.bisect_right(self._minutes, past)
        if index == len(self._minutes):
            return None
        return begin + self._minutes[index] * _ONE_MINUTE

    def _runs(self, placed: Placement) -> list[datetime]:
        """The runs a matching wall time makes, by the DST rules of the package docstring."""
        if placed.missing:
            return [] if self.every_hour else [placed.first]
        if placed.second is not None and self.every_hour:
            return [placed.first, placed.second]
        return [placed.first]

    def to_json(self) -> dict[str, Any]:
        """RedBeat's crontab form: ``"__type__": "crontab"`` and each field as written."""
        return {"__type__": "crontab", **self.texts}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[frozenset[int], ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={text!r}" for name, text in self.texts.items())
        return f"crontab({fields})"


def _plain(begin: Placement, end: Placement) -> bool:
    """An hour whose start and end occur once each, exactly an hour apart: one the clock
    runs through without a jump or a repeat (tz data has no change undone within an hour)."""
    return (
        not (begin.missing or end.missing)
        and begin.second is None
        and end.second is None
        and end.first - begin.first == _ONE_HOUR
    )


def _hour_end(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour)) + _ONE_HOUR


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time())
