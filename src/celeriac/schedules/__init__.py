"""Periodic schedules, as Celery's ``celery.schedules`` writes them: ``schedule`` (every
fixed period), ``crontab`` (wall-clock times) and ``solar`` (refused: no astronomy here).

The scheduler (``celeriac.beat``) calls one method, :meth:`Schedule.next_run`: the first run
strictly after a given instant, in UTC. It stores schedules with ``to_json()`` in RedBeat's
shapes and reads them back with :func:`schedule_from_json`; :func:`as_schedule` turns what a
``beat_schedule`` entry holds (seconds, a timedelta, a schedule) into a schedule.

Crontabs and daylight-saving time
---------------------------------
A crontab's fields are matched on the wall clock of the app's ``timezone`` (UTC when unset).
Where that clock jumps or repeats, two rules keep the promise a crontab's author most likely
meant, depending on whether the hour field names fixed hours or matches every hour:

* **A missing time** (spring forward: in New York on 8 March 2026 the clock goes from 01:59
  EST to 03:00 EDT, so 02:30 does not exist).

  - A crontab with fixed hours (the hour field is anything but every hour: ``hour=2``,
    ``hour='*/2'``, ``hour='1-5'``) runs *once, at the instant the clock jumps*: a daily
    02:30 job runs at 03:00 EDT (07:00 UTC) that day, so a daily job never loses its day.
    Several missing times map to that one instant (``minute='*/15', hour=2`` has four) and
    make one run; so does a missing time and an existing one at the same instant (``hour=2``
    and ``hour=3`` at minute 0 both fall at 03:00 EDT).
  - A crontab that runs every hour (``hour='*'``, or ``'0-23'``) skips the missing times:
    the clock lost an hour, and no real hour passed without its run.

* **A repeated time** (fall back: in New York on 1 November 2026 the clock goes from 01:59
  EDT back to 01:00 EST, so 01:30 happens at 05:30 and at 06:30 UTC).

  - A crontab with fixed hours runs once, at the *first* occurrence (01:30 EDT).
  - A crontab that runs every hour runs at *both*: every real hour has its run.

The same holds in any zone (Europe/London jumps from 01:00 GMT to 02:00 BST and back from
02:00 BST to 01:00 GMT). Intervals are real time and ignore the zone: an hourly
``schedule(3600)`` stays 3600 seconds apart across a change.

``next_run`` walks months, days and hours, skipping what cannot match or is already past,
never minute by minute. A crontab that can match no date (``day_of_month=31,
month_of_year=2``) returns None at once; any other finds its run within one 400-year
Gregorian cycle, which ``next_run`` bounds its search by.
"""

from __future__ import annotations

from celeriac.schedules.base import Schedule
from celeriac.schedules.cron import crontab
from celeriac.schedules.interval import schedule
from celeriac.schedules.storage import as_schedule, schedule_from_json
from celeriac.schedules.sun import solar

__all__ = ["Schedule", "as_schedule", "crontab", "schedule", "schedule_from_json", "solar"]
