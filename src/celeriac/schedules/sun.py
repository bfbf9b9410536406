"""``solar``: Celery's sunrise/sunset schedule, which celeriac does not have.

Celery computes solar events with the ``ephem`` astronomy package; celeriac ships no
astronomy, so a ``solar`` entry is refused when it is written, with the way to get close.
"""

from __future__ import annotations


class solar:  # lower case: Celery's name, which beat_schedule entries are written with
    """Refused: celeriac has no solar schedule. Constructing one raises NotImplementedError."""

    def __init__(self, event: str, lat: float, lon: float) -> None:
        raise NotImplementedError(
            f"solar({event!r}, {lat!r}, {lon!r}): celeriac has no astronomy to compute solar "
            "events. Use a crontab at the event's usual local time instead, with the app's "
            "timezone setting set to the place's zone (crontab(minute=30, hour=6) and "
            "timezone='Europe/Paris'), and adjust it with the seasons if it matters"
        )
