"""Wall-clock times in a zone as UTC instants, where daylight-saving time makes a time
missing (the clock jumps over it) or repeated (the clock goes back over it).

zoneinfo reads a naive time in two ways, ``fold=0`` and ``fold=1``: the same instant for an
ordinary time, two instants for a repeated one (both showing that time), and for a missing
time two instants on either side of the jump, neither showing it. The jump itself is found
between those two by bisection, since zoneinfo does not publish its transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one wall-clock time falls in UTC."""

    #: The first instant showing the time; for a missing time, the instant the clock jumps.
    first: datetime
    #: The second instant showing a repeated time (None when the time occurs once or never).
    second: datetime | None = None
    #: The time does not exist on that day in that zone.
    missing: bool = False


def place(wall: datetime, zone: tzinfo) -> Placement:
    """Where the naive ``wall`` time, read in ``zone``, falls in UTC."""
    early, late = _readings(wall, zone)
    if early == late:
        return Placement(early)
    if early.astimezone(zone).replace(tzinfo=None) == wall:
        return Placement(early, second=late)
    return Placement(_jump(early, late, zone), missing=True)


def earliest(wall: datetime, zone: tzinfo) -> datetime:
    """A bound: no instant showing ``wall`` or any later time is before this."""
    return min(_readings(wall, zone))


def latest(wall: datetime, zone: tzinfo) -> datetime:
    """A bound: no instant showing any time before ``wall`` is after this."""
    return max(_readings(wall, zone))


def _readings(wall: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """The two UTC readings of ``wall`` (fold 0 and 1), earlier first."""
    one = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    two = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return (one, two) if one <= two else (two, one)


def _jump(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The instant the zone's offset changes, between ``before`` and ``after``.

    Offsets change on whole seconds (tz data counts in seconds), so the search is over
    whole seconds: about a dozen steps for an hour's jump.
    """
    offset = before.astimezone(zone).utcoffset()
    low = before.replace(microsecond=0)
    steps = -(-(after - low) // _SECOND)  # whole seconds from low to past ``after``
    low_step, high_step = 0, steps  # invariant: low's offset is ``offset``, high's is not
    while high_step - low_step > 1:
        middle = (low_step + high_step) // 2
        if (low + middle * _SECOND).astimezone(zone).utcoffset() == offset:
            low_step = middle
        else:
            high_step = middle
    return low + high_step * _SECOND
