"""Periodic-task entries: what to send, on which schedule, and what to do about missed runs.

An entry comes from Celery's ``beat_schedule`` setting (or ``app.add_periodic_task``, which
writes to it), or from the schedule store, where entries are added, changed and paused at run
time (:mod:`celeriac.beat.store`). Entries are checked when they are read: an unknown key,
an option celeriac cannot send or a schedule it cannot run is an error that names the entry,
so a typo never becomes a task that silently never runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from celeriac.config import MISSED_RUN_POLICIES
from celeriac.errors import ConfigurationError
from celeriac.schedules import Schedule, as_schedule, schedule_from_json
from celeriac.schedules import schedule as schedule_class
from celeriac.sending import OPTION_NAMES

#: The keys of a ``beat_schedule`` entry: Celery's, and celeriac's ``missed`` and ``enabled``.
ENTRY_KEYS = frozenset(
    {"task", "schedule", "args", "kwargs", "options", "relative", "missed", "enabled"}
)
#: Send options an entry may carry: ``send_task``'s, less those a run decides itself.
ENTRY_OPTIONS = OPTION_NAMES - {"countdown", "eta"}


@dataclass(frozen=True)
class Entry:
    """One periodic task: ``task`` sent with ``args``/``kwargs``/``options`` at each run of
    ``schedule``; ``missed`` is its policy for runs missed while no scheduler ran (None: the
    ``beat_missed_runs`` setting); a paused entry (``enabled=False``) sends nothing."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    missed: str | None = None
    enabled: bool = True

    def paused(self, paused: bool = True) -> Entry:
        return replace(self, enabled=not paused)

    def to_json(self) -> dict[str, Any]:
        """The stored form (JSON), which :func:`entry_from_json` reads back."""
        data: dict[str, Any] = {
            "task": self.task,
            "schedule": self.schedule.to_json(),
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "enabled": self.enabled,
        }
        if self.missed is not None:
            data["missed"] = self.missed
        return data

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()


def entry_from_config(name: str, spec: Mapping[str, Any]) -> Entry:
    """An entry of Celery's ``beat_schedule``: ``{"task": ..., "schedule": ..., ...}``."""
    if not isinstance(spec, Mapping):
        raise _bad(name, f"is a {type(spec).__name__}, not a dict with 'task' and 'schedule'")
    unknown = sorted(set(spec) - ENTRY_KEYS)
    if unknown:
        raise _bad(name, f"has unknown key(s) {unknown}: the keys are {sorted(ENTRY_KEYS)}")
    for key in ("task", "schedule"):
        if key not in spec:
            raise _bad(name, f"has no {key!r}")
    raw = spec["schedule"]
    try:
        if spec.get("relative") and isinstance(raw, (int, float, timedelta)):
            raw = schedule_class(raw, relative=True)  # Celery's "relative" entry key
        schedule = as_schedule(raw)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise _bad(name, f"has a schedule celeriac cannot run: {exc}") from None
    return _entry(name, spec, schedule)


def entry_from_json(name: str, data: bytes | Mapping[str, Any]) -> Entry:
    """A stored entry (see :meth:`Entry.to_json`)."""
    try:
        spec = json.loads(data) if isinstance(data, bytes) else data
        schedule = schedule_from_json(spec["schedule"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad(name, f"is stored in a form celeriac cannot read ({exc})") from None
    return _entry(name, spec, schedule)


def _entry(name: str, spec: Mapping[str, Any], schedule: Schedule) -> Entry:
    """The entry ``spec`` describes (its schedule read already), checked."""
    return _checked(
        Entry(
            name=name,
            task=spec.get("task", ""),
            schedule=schedule,
            args=_args(name, spec.get("args", ())),
            kwargs=_kwargs(name, spec.get("kwargs", {})),
            options=dict(spec.get("options") or {}),
            missed=spec.get("missed"),
            enabled=spec.get("enabled", True),
        )
    )


def _checked(entry: Entry) -> Entry:
    if not isinstance(entry.task, str) or not entry.task:
        raise _bad(entry.name, f"has task {entry.task!r}: give the task's registered name")
    unknown = sorted(set(entry.options) - ENTRY_OPTIONS)
    if unknown:
        raise _bad(
            entry.name,
            f"has option(s) {unknown} that celeriac does not send: the options are"
            f" {sorted(ENTRY_OPTIONS)} (routing is by 'queue')",
        )
    if entry.missed is not None and entry.missed not in MISSED_RUN_POLICIES:
        raise _bad(
            entry.name, f"has missed={entry.missed!r}: use one of {', '.join(MISSED_RUN_POLICIES)}"
        )
    if not isinstance(entry.enabled, bool):
        raise _bad(entry.name, f"has enabled={entry.enabled!r}: use True or False")
    return entry


def _args(name: str, args: Any) -> tuple[Any, ...]:
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise _bad(name, f"has args {args!r}: give a list or tuple of positional arguments")
    return tuple(args)


def _kwargs(name: str, kwargs: Any) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise _bad(name, f"has kwargs {kwargs!r}: give a dict of keyword arguments")
    return dict(kwargs)


def _bad(name: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"periodic task {name!r} {why}")
