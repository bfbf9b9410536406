"""Where periodic tasks keep their state: the result store (Redis, the embedded SQLite file).

Two kinds of state, both in the store so that no scheduler keeps anything of its own and a
lost file restarts nothing:

- **Runs**, two counters per entry, in milliseconds since the epoch: ``claimed`` is the
  scheduled time of the newest run a scheduler took on, ``sent`` of the newest run whose
  message the broker confirmed. A run is claimed by advancing ``claimed`` to its time in one
  atomic step (:meth:`~celeriac.transports.backend.KeyValueBackend.advance_counter`): of
  any number of schedulers trying the same run, exactly one sees the counter move, so a run
  is sent once even by two leaders at once. ``claimed > sent`` means a scheduler died between
  taking a run and recording it sent: the next leader publishes that run again under the
  same task id, once per run where the broker can tell (see :mod:`celeriac.beat`).
  The first time a scheduler sees an entry, both counters start at that moment, so an
  interval's first run is one interval later, as in Celery.
- **Entries** added or changed at run time (``celeriac beat add/pause``,
  :class:`~celeriac.beat.PeriodicTasks`), as documents a dashboard can edit. A stored
  entry with the name of a ``beat_schedule`` one replaces it (pausing a configured entry
  stores a paused copy); removing it brings the configured one back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from celeriac.beat.entries import Entry, entry_from_json
from celeriac.errors import ConfigurationError
from celeriac.transports.backend import KeyValueBackend, ResultBackend

logger = logging.getLogger("celeriac.beat")

#: The document collection of stored entries, and the lease the schedulers elect a leader by.
ENTRIES = "celeriac-beat-entries"
LEADER_LEASE = "celeriac-beat-leader"


@dataclass(frozen=True)
class Runs:
    """An entry's run counters (milliseconds since the epoch)."""

    claimed: int
    sent: int

    @property
    def in_doubt(self) -> bool:
        """A run was claimed but its sending never confirmed."""
        return self.claimed > self.sent


class BeatStore:
    """Run counters and stored entries on a :class:`KeyValueBackend`."""

    def __init__(self, backend: ResultBackend) -> None:
        self.backend = state_store(backend)

    # -- runs --------------------------------------------------------------------------------

    async def runs(self, name: str, now_ms: int) -> Runs:
        """The entry's counters; an entry seen for the first time starts at ``now_ms``.
        ``claimed`` is set first and ``sent`` from it, so a crash between the two never
        makes the start look like a run in doubt."""
        claimed = await self.backend.init_counter(_claimed(name), now_ms)
        sent = await self.backend.init_counter(_sent(name), claimed)
        return Runs(claimed, sent)

    async def claim(self, name: str, slot_ms: int) -> int:
        """Take the run at ``slot_ms`` (and every earlier one): the claimed time before, so
        the claim is this caller's when that is less than ``slot_ms``."""
        return await self.backend.advance_counter(_claimed(name), slot_ms)

    async def mark_sent(self, name: str, slot_ms: int, *, sent: bool = True) -> None:
        """The run at ``slot_ms`` is settled: sent (and counted), or skipped by policy."""
        await self.backend.advance_counter(_sent(name), slot_ms)
        if sent:
            await self.backend.incr(_count(name))

    async def status(self, name: str) -> tuple[Runs, int]:
        """The counters as they are (0 for an entry never seen), and how many runs were sent."""
        claimed = await self.backend.get_counter(_claimed(name))
        sent = await self.backend.get_counter(_sent(name))
        return Runs(claimed, sent), await self.backend.get_counter(_count(name))

    async def forget_runs(self, name: str) -> None:
        for key in (_claimed(name), _sent(name), _count(name)):
            await self.backend.delete_counter(key)

    # -- stored entries ----------------------------------------------------------------------

    async def entries(self) -> dict[str, Entry]:
        """The stored entries; one that cannot be read is logged and left out (the others
        run: one bad document must not stop every periodic task)."""
        stored: dict[str, Entry] = {}
        for name, data in (await self.backend.documents(ENTRIES)).items():
            try:
                stored[name] = entry_from_json(name, data)
            except ConfigurationError as exc:
                logger.error("%s; it does not run until it is stored again", exc)
        return stored

    async def put(self, entry: Entry) -> None:
        await self.backend.put_document(ENTRIES, entry.name, entry.encode())

    async def remove(self, name: str) -> bool:
        return await self.backend.delete_document(ENTRIES, name)


def merged(configured: Mapping[str, Entry], stored: Mapping[str, Entry]) -> dict[str, Entry]:
    """Every entry in force: the configured ones, replaced by stored ones of the same name."""
    return {**configured, **stored}


def state_store(backend: ResultBackend) -> KeyValueBackend:
    """``backend`` if it can keep the scheduler's state, else an error that says what can."""
    if isinstance(backend, KeyValueBackend):
        return backend
    raise ConfigurationError(
        f"periodic tasks keep their schedule and leader in the result store, and"
        f" {backend.describe()} keeps nothing: set result_backend to a Redis URL or an"
        " embedded SQLite file (sqlite:///path) shared by every scheduler"
    )


def _claimed(name: str) -> str:
    return f"celeriac-beat-claimed:{name}"


def _sent(name: str) -> str:
    return f"celeriac-beat-sent:{name}"


def _count(name: str) -> str:
    return f"celeriac-beat-count:{name}"
