"""Periodic tasks managed at run time: list, add, change, pause, resume and remove entries.

Changes are stored in the result store (:mod:`celeriac.beat.store`), where the leading
scheduler reads them on its next pass (within ``beat_max_loop_interval``); nothing needs a
restart. As every dual API: awaited in async code, a plain call in sync code.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celeriac._bridge import dual
from celeriac.beat.entries import Entry, entry_from_config
from celeriac.beat.scheduler import configured_entries, zone_of
from celeriac.beat.store import BeatStore, merged
from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celery


@dataclass(frozen=True)
class EntryInfo:
    """An entry in force, where it comes from, and its runs: ``source`` is ``"config"``
    (``beat_schedule``), ``"stored"`` (added at run time) or ``"stored over config"`` (a
    configured entry changed or paused at run time); ``last_run`` is the scheduled time of
    the newest run sent (None before the first), ``next_run`` of the next (None: paused or
    never again), ``total_run_count`` how many runs were sent (Celery's name)."""

    entry: Entry
    source: str
    last_run: datetime | None
    next_run: datetime | None
    total_run_count: int


class PeriodicTasks:
    """``app``'s periodic tasks as every scheduler of its result store sees them."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def list(self) -> Awaitable[builtins.list[EntryInfo]]:
        return dual(self._list())

    def add(
        self,
        name: str,
        task: str,
        schedule: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        options: Mapping[str, Any] | None = None,
        missed: str | None = None,
        replace_existing: bool = False,
    ) -> Awaitable[Entry]:
        """Store a new entry (as a ``beat_schedule`` item would give it); an entry of that
        name is an error unless ``replace_existing``."""
        spec: dict[str, Any] = {"task": task, "schedule": schedule, "args": tuple(args)}
        spec["kwargs"] = dict(kwargs or {})
        spec["options"] = dict(options or {})
        if missed is not None:
            spec["missed"] = missed
        return dual(self._add(entry_from_config(name, spec), replace_existing))

    def change(self, name: str, **fields: Any) -> Awaitable[Entry]:
        """Change fields of an entry in force (``schedule``, ``args``, ``kwargs``,
        ``options``, ``missed``, ``task``); the changed entry is stored."""
        return dual(self._change(name, fields))

    def pause(self, name: str) -> Awaitable[Entry]:
        return dual(self._change(name, {"enabled": False}))

    def resume(self, name: str) -> Awaitable[Entry]:
        return dual(self._change(name, {"enabled": True}))

    def remove(self, name: str) -> Awaitable[bool]:
        """Remove the stored entry: an added one is gone, a configured one is back as
        configured. False when nothing of that name is stored."""
        return dual(self._remove(name))

    # -- implementation ------------------------------------------------------------------------

    async def _store(self) -> BeatStore:
        return BeatStore((await self.app.connection()).backend)

    async def _list(self) -> builtins.list[EntryInfo]:
        store = await self._store()
        configured = configured_entries(self.app)
        stored = await store.entries()
        zone = zone_of(self.app)
        infos = []
        for name, entry in sorted(merged(configured, stored).items()):
            source = "config" if name not in stored else "stored"
            if name in stored and name in configured:
                source = "stored over config"
            runs, count = await store.status(name)
            last = _time(runs.sent) if count else None
            start = _time(runs.claimed) if runs.claimed else datetime.now(UTC)
            following = entry.schedule.next_run(start, zone) if entry.enabled else None
            infos.append(EntryInfo(entry, source, last, following, count))
        return infos

    async def _add(self, entry: Entry, replace_existing: bool) -> Entry:
        store = await self._store()
        if not replace_existing:
            known = merged(configured_entries(self.app), await store.entries())
            if entry.name in known:
                raise ConfigurationError(
                    f"periodic task {entry.name!r} exists: change() it, or add it with"
                    " replace_existing=True"
                )
        await store.put(entry)
        return entry

    async def _change(self, name: str, fields: Mapping[str, Any]) -> Entry:
        store = await self._store()
        known = merged(configured_entries(self.app), await store.entries())
        if name not in known:
            raise ConfigurationError(
                f"no periodic task {name!r}: the entries are {sorted(known) or 'none'}"
            )
        current = known[name]
        spec = {**current.to_json(), **fields}
        spec["schedule"] = fields.get("schedule", current.schedule)
        spec.pop("enabled", None)
        changed = replace(
            entry_from_config(name, spec), enabled=fields.get("enabled", current.enabled)
        )
        await store.put(changed)
        return changed

    async def _remove(self, name: str) -> bool:
        store = await self._store()
        removed = await store.remove(name)
        if removed and name not in configured_entries(self.app):
            await store.forget_runs(name)
        return removed


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
