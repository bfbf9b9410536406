"""What ``celeriac beat`` does: run a scheduler, or list and change the stored entries."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celeriac.beat.manage import EntryInfo, PeriodicTasks
from celeriac.beat.scheduler import Scheduler
from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celery

logger = logging.getLogger("celeriac.beat")


async def run_scheduler(app: Celery) -> int:
    """Run a scheduler until SIGINT or SIGTERM; the lead is given up on the way out."""
    scheduler = Scheduler(app)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    names = ", ".join(sorted(scheduler.configured)) or "none configured (stored ones only)"
    logger.info("beat: %s starts; periodic tasks: %s", scheduler.holder, names)
    try:
        async with app.setup():
            await scheduler.run(stopping)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    logger.info("beat: %s stopped", scheduler.holder)
    return 0


async def manage(app: Celery, action: str, words: Sequence[str], options: dict[str, Any]) -> int:
    """``beat list``, ``add NAME TASK``, ``pause NAME``, ``resume NAME``, ``remove NAME``."""
    tasks = PeriodicTasks(app)
    async with app.setup():
        if action == "list":
            print(format_entries(await tasks.list()))
            return 0
        if action == "add":
            name, task = _words(action, words, "NAME TASK")
            await tasks.add(name, task, _schedule(options), **_entry_options(options))
            print(f"added {name}")
            return 0
        (name,) = _words(action, words, "NAME")
        if action == "remove":
            if not await tasks.remove(name):
                raise ConfigurationError(f"no stored periodic task {name!r} to remove")
            print(f"removed {name}")
            return 0
        await (tasks.pause(name) if action == "pause" else tasks.resume(name))
        print(f"{action}d {name}")
        return 0


def format_entries(infos: Sequence[EntryInfo]) -> str:
    """One line per entry: name, task, schedule, state, where it comes from, last and
    next run, runs sent."""
    if not infos:
        return "no periodic tasks (beat_schedule is empty and none is stored)"
    rows = [("NAME", "TASK", "SCHEDULE", "STATE", "SOURCE", "LAST RUN", "NEXT RUN", "RUNS")]
    for info in infos:
        entry = info.entry
        rows.append(
            (
                entry.name,
                entry.task,
                _describe(entry.schedule.to_json()),
                "active" if entry.enabled else "paused",
                info.source,
                _when(info.last_run),
                _when(info.next_run),
                str(info.total_run_count),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _describe(schedule: dict[str, Any]) -> str:
    kind = schedule.get("__type__")
    if kind == "interval":
        return f"every {schedule['every']:g}s" + (" (relative)" if schedule.get("relative") else "")
    if kind == "crontab":
        fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        return "cron " + " ".join(str(schedule[f]) for f in fields)
    return json.dumps(schedule)


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S%z")


def _words(action: str, words: Sequence[str], wanted: str) -> tuple[str, ...]:
    if len(words) != len(wanted.split()):
        raise ConfigurationError(
            f"beat {action} takes {wanted}, not {' '.join(words) or 'nothing'}"
        )
    return tuple(words)


def _schedule(options: dict[str, Any]) -> Any:
    from celeriac.schedules import crontab

    every, cron = options.get("every"), options.get("cron")
    if (every is None) == (cron is None):
        raise ConfigurationError(
            "beat add needs one of --every SECONDS or --cron 'm h dom mon dow'"
        )
    if every is not None:
        return every
    try:
        return crontab.from_string(str(cron))
    except ValueError as exc:
        raise ConfigurationError(f"--cron {cron!r}: {exc}") from None


def _entry_options(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("args", "kwargs"):
        if options.get(key) is not None:
            try:
                out[key] = json.loads(options[key])
            except ValueError as exc:
                raise ConfigurationError(f"--{key} is not JSON: {exc}") from None
    if options.get("queue"):
        out["options"] = {"queue": options["queue"]}
    if options.get("missed"):
        out["missed"] = options["missed"]
    return out
