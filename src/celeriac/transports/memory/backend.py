"""``memory://`` results: the reference result backend, inside one process, for tests.

Shared, like the memory broker, by every instance with the same URL in the process; a
waiter on another event loop (the sync API's private thread) is woken on its own loop.
Counters, leases, documents, rate limits, saved groups and chord joins live beside the
records, each changed under the namespace's lock. A rate limit is its start times (oldest
first) and its next retry time, dropped once idle for its period; it follows
:func:`~celeriac.transports.backend.rate_wait` and
:func:`~celeriac.transports.backend.spaced_retry` by the backend's clock.

A chord join is Redis's (Celery's) in one dict entry per group: the header's size (set by
:meth:`~MemoryBackend.chord_start`), the parts received keyed by ``"<task id>:<index>"``
(so a redelivered part counts once), and the claim: the token of the caller that completed
the chord, for :data:`CHORD_CLAIM_SECONDS`, then ``"done"`` for :data:`CHORD_DONE_SECONDS`
once :meth:`~MemoryBackend.chord_done` ran, so that a late copy of a part finds the chord
over. Only :meth:`~MemoryBackend.chord_part` checks for completion, as Celery's
part-return does: the producer calls ``chord_start`` before it publishes the last header
task, so the last part always finds the size. The part helpers at the end of this module
(Celery's encoding and order of parts) serve the SQLite and Redis stores too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from celeriac import errors
from celeriac.protocol.serialization import json_text
from celeriac.transports.backend import (
    CHORD_CLAIM_SECONDS,
    CHORD_DONE_SECONDS,
    DONE,
    Changes,
    ChordPart,
    EventLog,
    KeyValueBackend,
    Log,
    Meta,
    decode,
    decode_part,
    part_key,
    part_member,
    part_order,
    rate_wait,
    spaced_retry,
)
from celeriac.transports.broker import now
from celeriac.transports.memory.broker import reset_memory_transports
from celeriac.transports.options import checked_options

__all__ = ["MemoryBackend", "clear_results", "reset_memory_transports"]

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bytes]"]


@dataclass(slots=True)
class _Record:
    data: bytes
    ready: bool
    expires_at: float | None

    def expired(self, at: float) -> bool:
        return self.expires_at is not None and self.expires_at <= at


class _Results:
    """The records of one namespace and the futures waiting on them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, _Record] = {}
        self.waiters: dict[str, list[_Waiter]] = {}
        self.events: dict[str, list[bytes]] = {}
        self.watchers: dict[str, set[_Watcher]] = {}
        self.counters: dict[str, tuple[int, float | None]] = {}  # key -> value, expires at
        self.leases: dict[str, tuple[str, float]] = {}  # name -> holder, expires at
        self.revoked: dict[str, float] = {}  # task id -> revoked until
        self.groups: dict[str, tuple[bytes, float | None]] = {}  # id -> record, expires at
        self.chords: dict[str, _Chord] = {}
        self.documents: dict[str, dict[str, bytes]] = {}  # collection -> name -> data
        self.rates: dict[str, _Rate] = {}

    def changed(self, task_id: str) -> None:
        """Wake the task's streams, each on its own loop. Call without the lock held."""
        with self.lock:
            watchers = list(self.watchers.get(task_id, ()))
        for watcher in watchers:
            watcher.set()

    def live(self, task_id: str) -> _Record | None:
        """The record unless it expired (then dropped). Call with the lock held."""
        record = self.records.get(task_id)
        if record is not None and record.expired(now()):
            del self.records[task_id]
            self.events.pop(task_id, None)
            return None
        return record

    def remove_waiter(self, task_id: str, waiter: _Waiter) -> None:
        with self.lock:
            waiters = self.waiters.get(task_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self.waiters.pop(task_id, None)


@dataclass(slots=True)
class _Chord:
    """One chord's join: Redis's ``.s``, ``.j`` and ``.d`` (expiring together), and ``.c``."""

    size: int | None = None
    #: ``"<task id>:<index>"`` -> (index, the part as Redis keeps it).
    parts: dict[str, tuple[int | None, bytes]] = field(default_factory=dict)
    expires_at: float | None = None
    holder: str | None = None  # a claim's token, or DONE
    held_until: float = 0.0

    def live(self, at: float) -> _Chord:
        """Itself, with what expired by ``at`` dropped."""
        if self.expires_at is not None and self.expires_at <= at:
            self.size, self.expires_at = None, None
            self.parts.clear()
        if self.holder is not None and self.held_until <= at:
            self.holder = None
        return self


@dataclass(slots=True)
class _Rate:
    """One rate limit's log: start times, oldest first, and the next retry time to hand out."""

    starts: list[float] = field(default_factory=list)
    next_retry: float = 0.0
    idle_at: float = 0.0  # when nothing of it matters any more

    def live(self, at: float, period: float) -> _Rate:
        """Itself, without the starts that left the period's window by ``at``."""
        cut = at - period
        kept = next((i for i, start in enumerate(self.starts) if start > cut), len(self.starts))
        del self.starts[:kept]
        return self


class _Watcher(Changes):
    """A stream's wake-up, set from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.signal = asyncio.Event()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # the stream's loop is closed
            self.loop.call_soon_threadsafe(self.signal.set)

    async def wait(self, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.signal.wait()
        except TimeoutError:
            return
        finally:
            self.signal.clear()


_REGISTRY_LOCK = threading.Lock()
_RESULTS: dict[str, _Results] = {}


def _results_for(url: str) -> _Results:
    parts = urlsplit(url)
    key = parts.netloc + parts.path
    with _REGISTRY_LOCK:
        results = _RESULTS.get(key)
        if results is None:
            results = _RESULTS[key] = _Results()
        return results


def clear_results() -> None:
    """Forget every ``memory://`` result (``reset_memory_transports`` calls this)."""
    with _REGISTRY_LOCK:
        _RESULTS.clear()


def _resolve(future: asyncio.Future[bytes], data: bytes) -> None:
    if not future.done():
        future.set_result(data)


class MemoryBackend(KeyValueBackend):
    """Results in this process's memory. Options: none (any is a ConfigurationError).

    ``clock`` (wall time by default) is what counters, leases, saved groups and chord joins
    expire by, and what rate limits time their starts by: a test may pass one it moves
    itself."""

    def __init__(
        self,
        url: str,
        *,
        options: dict[str, Any] | None = None,
        broker_url: str | None = None,
        clock: Callable[[], float] = now,
    ) -> None:
        super().__init__(url, options=options, broker_url=broker_url)
        self.clock = clock
        checked_options(self.options, {}, "result_backend_transport_options", "memory://")
        self._results = _results_for(url)
        self._pending: set[asyncio.Future[bytes]] = set()
        self._claims: dict[str, str] = {}  # group id -> the token of a chord this one claimed
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for future in self._pending:
            if not future.done():
                future.set_exception(errors.BrokerError(f"result backend {self.url} was closed"))

    async def _set(self, task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        expires_at = None if expires is None else now() + expires
        with self._results.lock:
            self._results.records[task_id] = _Record(data, ready, expires_at)
            waiters = self._results.waiters.pop(task_id, []) if ready else []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future, data)
            except RuntimeError:  # that waiter's loop is closed
                continue
        self._results.changed(task_id)

    async def _append(self, task_id: str, data: bytes, expires: float | None) -> None:
        expires_at = None if expires is None else now() + expires
        with self._results.lock:
            self._results.records[task_id] = _Record(data, False, expires_at)
            self._results.events.setdefault(task_id, []).append(data)
        self._results.changed(task_id)

    async def _events_since(self, task_id: str, after: int | None) -> EventLog:
        with self._results.lock:
            record = self._results.live(task_id)
            events = list(self._results.events.get(task_id, ()))
        wanted = events[-1:] if after is None else events[after:]
        return Log(wanted, len(events), None if record is None else record.data)

    @asynccontextmanager
    async def _watch_task(self, task_id: str) -> AsyncIterator[Changes]:
        watcher = _Watcher()
        with self._results.lock:
            self._results.watchers.setdefault(task_id, set()).add(watcher)
        try:
            yield watcher
        finally:
            with self._results.lock:
                watchers = self._results.watchers.get(task_id, set())
                watchers.discard(watcher)
                if not watchers:
                    self._results.watchers.pop(task_id, None)

    async def _get(self, task_id: str) -> bytes | None:
        with self._results.lock:
            record = self._results.live(task_id)
        return None if record is None else record.data

    async def _wait(self, task_id: str, timeout: float | None) -> bytes:
        if self._closed:
            raise errors.BrokerError(f"result backend {self.url} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        waiter = (loop, future)
        with self._results.lock:
            record = self._results.live(task_id)
            if record is not None and record.ready:
                return record.data
            self._results.waiters.setdefault(task_id, []).append(waiter)
        self._pending.add(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError as exc:
            raise self.not_ready(task_id, timeout) from exc
        finally:
            self._pending.discard(future)
            self._results.remove_waiter(task_id, waiter)

    async def _delete(self, task_id: str) -> None:
        with self._results.lock:
            self._results.records.pop(task_id, None)
            self._results.events.pop(task_id, None)

    # -- counters and leases ---------------------------------------------------------------

    async def _incr(self, key: str, by: int, expires: float | None) -> int:
        at = self.clock()
        with self._results.lock:
            value, expires_at = self._live_counter(key, at)
            if expires is not None:
                expires_at = at + expires
            self._results.counters[key] = (value + by, expires_at)
            return value + by

    async def _get_counter(self, key: str) -> int:
        with self._results.lock:
            return self._live_counter(key, self.clock())[0]

    async def _delete_counter(self, key: str) -> None:
        with self._results.lock:
            self._results.counters.pop(key, None)

    def _live_counter(self, key: str, at: float) -> tuple[int, float | None]:
        """The counter's value and expiry, (0, None) when missing or expired. Lock held."""
        counter = self._results.counters.get(key)
        if counter is None or (counter[1] is not None and counter[1] <= at):
            return 0, None
        return counter

    async def _acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        at = self.clock()
        with self._results.lock:
            lease = self._results.leases.get(name)
            if lease is not None and lease[0] != holder and lease[1] > at:
                return False
            self._results.leases[name] = (holder, at + ttl)
            return True

    async def _release_lease(self, name: str, holder: str) -> None:
        with self._results.lock:
            lease = self._results.leases.get(name)
            if lease is not None and lease[0] == holder:
                del self._results.leases[name]

    async def _advance_counter(self, key: str, to: int, expires: float | None) -> int:
        at = self.clock()
        with self._results.lock:
            value, expires_at = self._live_counter(key, at)
            if value < to:
                self._results.counters[key] = (to, expires_at if expires is None else at + expires)
            return value

    async def _init_counter(self, key: str, value: int, expires: float | None) -> int:
        at = self.clock()
        with self._results.lock:
            counter = self._results.counters.get(key)
            if counter is not None and (counter[1] is None or counter[1] > at):
                return counter[0]
            self._results.counters[key] = (value, None if expires is None else at + expires)
            return value

    # -- documents -------------------------------------------------------------------------

    async def _put_document(self, collection: str, name: str, data: bytes) -> None:
        with self._results.lock:
            self._results.documents.setdefault(collection, {})[name] = data

    async def _documents(self, collection: str) -> dict[str, bytes]:
        with self._results.lock:
            return dict(self._results.documents.get(collection, {}))

    async def _delete_document(self, collection: str, name: str) -> bool:
        with self._results.lock:
            documents = self._results.documents.get(collection, {})
            found = documents.pop(name, None) is not None
            if not documents:
                self._results.documents.pop(collection, None)
            return found

    # -- rate limits -----------------------------------------------------------------------

    async def _acquire_rate(self, key: str, limit: int, period: float, burst: int) -> float:
        with self._results.lock:
            at = self.clock()  # under the lock: starts are recorded in the order of their times
            self._drop_idle_rates(at)
            rate = self._results.rates.setdefault(key, _Rate()).live(at, period)
            wait = rate_wait(rate.starts, at, limit, period, burst)
            if wait <= 0:
                rate.starts.append(at)
                rate.idle_at = max(rate.idle_at, at + period)
                return 0.0
            retry, rate.next_retry = spaced_retry(at, wait, rate.next_retry, period, limit)
            rate.idle_at = max(rate.idle_at, rate.next_retry, at + period)
            return retry - at

    def _drop_idle_rates(self, at: float) -> None:
        """Forget rate limits nobody used for their period. Lock held."""
        idle = [key for key, rate in self._results.rates.items() if rate.idle_at <= at]
        for key in idle:
            del self._results.rates[key]

    # -- revocations -----------------------------------------------------------------------

    async def _add_revoked(self, task_ids: list[str], until: float) -> None:
        with self._results.lock:
            for task_id in task_ids:
                self._results.revoked[task_id] = max(until, self._results.revoked.get(task_id, 0))

    async def _revoked(self) -> dict[str, float]:
        at = self.clock()
        with self._results.lock:
            live = {k: v for k, v in self._results.revoked.items() if v > at}
            self._results.revoked = dict(live)
            return live

    # -- groups and chords -----------------------------------------------------------------

    joins_chords = True

    async def save_group(self, group_id: str, meta: Meta, *, expires: float | None) -> None:
        expires_at = None if expires is None else self.clock() + expires
        with self._results.lock:
            self._results.groups[group_id] = (json_text(meta).encode(), expires_at)

    async def restore_group(self, group_id: str) -> Meta | None:
        with self._results.lock:
            group = self._results.groups.get(group_id)
            if group is not None and group[1] is not None and group[1] <= self.clock():
                del self._results.groups[group_id]
                group = None
        return None if group is None else decode(group[0])

    async def forget_group(self, group_id: str) -> None:
        with self._results.lock:
            self._results.groups.pop(group_id, None)

    async def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        at = self.clock()
        with self._results.lock:
            chord = self._chord(group_id, at)
            chord.holder = None  # a chord started again (a frozen one applied twice) runs anew
            chord.size = size
            chord.expires_at = None if expires is None else at + expires

    async def chord_part(
        self, group_id: str, part: ChordPart, *, expires: float | None
    ) -> list[ChordPart] | None:
        at = self.clock()
        with self._results.lock:
            chord = self._chord(group_id, at)
            if chord.holder == DONE:
                return None
            chord.parts.setdefault(part_key(part), (part.index, part_member(part)))
            if expires is not None:
                chord.expires_at = at + expires
            if chord.size != len(chord.parts) or chord.holder is not None:
                return None
            token = uuid.uuid4().hex
            chord.holder, chord.held_until = token, at + CHORD_CLAIM_SECONDS
            parts = sorted(chord.parts.values(), key=part_order)
        self._claims[group_id] = token
        return [decode_part(member, index) for index, member in parts]

    async def chord_done(self, group_id: str) -> None:
        """Drop the chord, if this instance's :meth:`chord_part` holds its claim still
        (else another caller took it over: its ``chord_done`` drops it)."""
        token = self._claims.pop(group_id, None)
        at = self.clock()
        with self._results.lock:
            chord = self._results.chords.get(group_id)
            if token is None or chord is None or chord.live(at).holder != token:
                return
            chord.size, chord.expires_at = None, None
            chord.parts.clear()
            chord.holder, chord.held_until = DONE, at + CHORD_DONE_SECONDS

    def _chord(self, group_id: str, at: float) -> _Chord:
        """The group's live chord, made if missing. Lock held."""
        chord = self._results.chords.get(group_id)
        if chord is None:
            chord = self._results.chords[group_id] = _Chord()
        return chord.live(at)
