"""What the scheduler asks of a schedule, and the one check every schedule makes of it."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Schedule(Protocol):
    """A periodic entry's times: what ``celeriac.beat`` calls.

    The scheduler keeps each entry's last *scheduled* slot and asks for the next one from it,
    never from the time a message went out, so a slow send moves no later run.
    """

    def next_run(self, after: datetime, zone: tzinfo) -> datetime | None:
        """The first run time strictly after ``after``, as an aware UTC datetime.

        ``after`` is aware, in any zone. ``zone`` is the zone wall-clock fields are read in
        (the app's ``timezone`` setting, UTC when unset). None: the schedule never runs again.
        """
        ...

    def to_json(self) -> dict[str, Any]:
        """The storage form: a JSON-able dict whose ``"__type__"`` names the kind."""
        ...


def as_utc(after: datetime) -> datetime:
    """``after`` as a UTC datetime; a naive one is refused rather than guessed at."""
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError(
            f"next_run() was given the naive datetime {after.isoformat()}: pass an aware one "
            "(datetime.now(UTC), or a datetime with tzinfo set)"
        )
    return after.astimezone(UTC)
