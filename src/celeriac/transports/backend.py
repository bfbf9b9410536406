"""The result backend contract: store and read Celery-format result records.

A record ("meta") is the dict Celery stores for a task: ``status``, ``result``,
``traceback``, ``children``, ``date_done``, ``task_id`` and, when set, ``parent_id`` and
``group_id``. Backends store it as JSON text, exactly as Celery's Redis backend does, so
that records are readable by Celery clients on shared stores.

Besides the record, a task that reports progress (a task that yields, ``update_state``) has
an event log: every state it stores with :meth:`ResultBackend.store_event` is appended to it,
so :meth:`ResultBackend.stream` can hand a caller every event, in order, however fast they
come. The log expires with the record.

Two classes, two jobs:

- :class:`ResultBackend` is the contract: the public operations the app and the worker call
  (store, store_event, get, wait, stream, forget), each documented here. A backend that
  delivers results rather than keeping them (``rpc://``: to the caller's queue) or keeps none
  (``disabled://``) implements them directly.
- :class:`KeyValueBackend` is the template for stores that keep records under keys (memory,
  SQLite, Redis): it implements the contract over a handful of ``_`` primitives, and adds
  what such a store can offer beyond results: atomic counters (:meth:`~KeyValueBackend.incr`,
  how many of a group's tasks ended; :meth:`~KeyValueBackend.advance_counter`, which of
  several schedulers claims a periodic task's run), leases
  (:meth:`~KeyValueBackend.acquire_lease`, one holder at a time, such as one scheduler among
  several), small named documents (:meth:`~KeyValueBackend.put_document`, periodic-task
  entries a dashboard can edit) and rate limits shared by every process on the store
  (:meth:`~KeyValueBackend.acquire_rate`).

A rate limit is a sliding-window log of start times per key, read by the store's clock (Redis's
``TIME``; the backend's clock on SQLite and in memory), so the workers' clocks never matter.
A start is allowed while fewer than ``limit`` starts fall in the half-open window
``(now - period, now]`` and, for a ``burst`` below ``limit``, fewer than ``burst`` in
``(now - period * burst / limit, now]``. A refused caller is told when to come back: never
before the start that binds leaves its window, and, since many callers refused at once would
otherwise all come back at the same instant and all but ``limit`` of them be refused again,
at times handed out ``period / limit`` apart (a per-key "next retry" time). A caller refused
by no more than :data:`SHORT_WAIT` (some milliseconds, and never more than ``period /
limit``) is told its own wait instead and takes no place in that line: it is, as a rule, a
deferred message whose turn came back from the broker a little before the start it follows
left the window, and sending it to the end of the line would leave that start unused.
:func:`rate_wait` and :func:`spaced_retry` are that rule for the stores that decide in
Python (memory, SQLite); Redis's script says the same in Lua.

Storing can fail two ways, and a backend says which (see :mod:`celeriac.errors`):
:class:`~celeriac.errors.BackendUnreachable` when the store is out of reach now (the worker
keeps the outcome and stores it again with backoff), :class:`~celeriac.errors.ResultRejected`
when it refused this record (the worker stores a FAILURE that says why instead). Every record
is checked against ``result_max_size`` in :meth:`ResultBackend.encode` before any backend
stores it.
"""

from __future__ import annotations

import asyncio
import json
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import errors
from celeriac.protocol.serialization import json_text, json_value
from celeriac.states import READY_STATES
from celeriac.transports.urls import redacted

if TYPE_CHECKING:
    from celeriac.transports.broker import Broker

Meta = dict[str, Any]

#: A refusal this short (seconds), or shorter than one caller's share of the period
#: (``period / limit``) if that is shorter still, is answered with its own wait and takes no
#: place in a rate limit's line of retry times (see the module docstring). Deferred messages
#: come back from a broker some milliseconds off their retry times: on Redis, refusals of up
#: to 9 ms were measured, and at a 5 ms bound the longer ones cost one start in 50.
SHORT_WAIT = 0.01


class Changes(Protocol):
    """Tells a stream that a task's record or event log may have changed."""

    async def wait(self, timeout: float | None) -> None:
        """Return after a change, or after ``timeout`` seconds (a re-check costs little)."""
        ...


class EventLog(Protocol):
    """What one atomic read of a task's event log returns (see :func:`follow`)."""

    events: list[bytes]
    count: int
    record: bytes | None


class ResultBackend(ABC):
    """The contract of every result store. Instances are bound to the loop they connected on.

    ``reply_to`` belongs to the contract: a task message names where its states go (the
    caller's queue), and :meth:`store` and :meth:`store_event` take it, so a backend that
    delivers results (``rpc://``) sends them there; a store that keeps results by task id
    ignores it.
    """

    #: The queue results are delivered to, for a backend that sends them to the caller
    #: (rpc://): the app names it as ``reply_to`` in every task it publishes.
    reply_to: str | None = None

    def __init__(
        self, url: str, *, options: dict[str, Any] | None = None, broker_url: str | None = None
    ) -> None:
        self.url = url
        self.options = dict(options or {})
        #: The app's broker, for a backend that delivers through it (rpc://).
        self.broker_url = broker_url
        #: ``result_max_size``: the largest encoded record stored (0: no limit of ours).
        self.max_size = 0

    def share_connection(self, broker: Broker) -> None:
        """Use ``broker``'s connection instead of opening one, when both reach the same
        server the same way; called before :meth:`connect`. A store that borrows a
        connection leaves it open in :meth:`close` (its broker, closed after it, owns it).
        By default a store keeps connections of its own."""

    async def connect(self) -> None:
        """Open connections; called once before any other method."""

    async def close(self) -> None:
        """Release connections; wake every waiter with an error."""

    def not_ready(self, task_id: str, timeout: float | None) -> errors.TimeoutError:
        """The error of a wait for ``task_id`` that timed out. It names the store waited on:
        a client that reads another store than the worker writes is the usual cause of a
        result that never comes."""
        return errors.TimeoutError(
            f"task {task_id} was not ready after {timeout} s; its result was awaited in"
            f" {self.describe()}{self.not_ready_hint}"
        )

    #: Appended to :meth:`not_ready`'s message: what to check on this kind of store.
    not_ready_hint = ": is a worker running on this app's broker, and reading the task's queue?"

    def describe(self) -> str:
        """Where results go, for the worker's ready line (a password hidden)."""
        return redacted(self.url)

    def encode(self, task_id: str, meta: Meta) -> bytes:
        """The record as stored, checked against ``result_max_size`` (every store of every
        backend goes through here): a record no store should keep fails fast, with the fix."""
        # kombu's JSON, as Celery's backend: byte for byte its records, datetimes included.
        data = json_text(meta).encode()
        if self.max_size and len(data) > self.max_size:
            raise errors.ResultTooLarge(
                f"the {meta['status']} record of task {task_id} is {len(data)} bytes, over"
                f" result_max_size={self.max_size}: return large data by reference (a path"
                " or URL), or raise result_max_size"
            )
        return data

    @abstractmethod
    async def store(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        """Write the task's current record (encoded with :meth:`encode`); ``expires`` is
        seconds to keep it (None: forever). ``reply_to`` is the task message's: where a
        backend that delivers results sends them."""

    @abstractmethod
    async def store_event(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        """Store a state that is not final (PROGRESS, STARTED, ...) as the record, as
        :meth:`store` does, and append it to the task's event log. A final state is a
        ``ValueError``: :meth:`store` it."""

    @abstractmethod
    async def get(self, task_id: str) -> Meta | None:
        """The stored record, or None while nothing is stored (PENDING)."""

    @abstractmethod
    async def wait(self, task_id: str, timeout: float | None) -> Meta:
        """Return the record once it is in a ready state.

        Raises :class:`celeriac.errors.TimeoutError` (:meth:`not_ready`) after ``timeout``
        seconds. Waiting uses the transport's notifications; it never polls faster than the
        transport needs.
        """

    @abstractmethod
    def stream(self, task_id: str, timeout: float | None) -> AsyncIterator[Meta]:
        """The task's latest state (if it has one), then every later event in order, then
        its final record; the iterator ends after a final (ready) state.

        Raises :class:`celeriac.errors.TimeoutError` if no final state comes within
        ``timeout`` seconds.
        """

    @abstractmethod
    async def forget(self, task_id: str) -> None:
        """Delete the record (and the task's event log); forgetting twice is fine."""

    # -- groups and chords -----------------------------------------------------------------

    #: Whether this store joins chords itself (:meth:`chord_start`, :meth:`chord_part`,
    #: :meth:`chord_done`). One that does not refuses a chord before anything is published.
    joins_chords: bool = False

    async def save_group(self, group_id: str, meta: Meta, *, expires: float | None) -> None:
        """Keep a group's record (``GroupResult.save()``: Celery's ``{"result": ...}`` under
        ``celery-taskset-meta-<group_id>`` on a key-value store)."""
        raise self.no_groups("save a group")

    async def restore_group(self, group_id: str) -> Meta | None:
        """A group's record kept by :meth:`save_group`, or None."""
        raise self.no_groups("restore a group")

    async def forget_group(self, group_id: str) -> None:
        """Delete a group's record (forgetting twice is fine)."""
        raise self.no_groups("forget a group")

    async def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        """A chord's header of ``size`` tasks is being published: the store counts its
        parts from now on (on Redis, Celery's ``celery-taskset-meta-<gid>.s``). Called before
        the last header task is published."""
        raise self.no_groups("join a chord")

    async def chord_part(
        self, group_id: str, part: ChordPart, *, expires: float | None
    ) -> list[ChordPart] | None:
        """Record that a header task of the chord ended, in one atomic step; a part that
        comes twice (a redelivered task) counts once. Returns every part, in ``index``
        order, to the one caller whose part completed the chord and which now owns
        publishing its body (then :meth:`chord_done`); None to every other caller."""
        raise self.no_groups("join a chord")

    async def chord_done(self, group_id: str) -> None:
        """The chord's body is published (or failed): drop what the store kept for it."""
        raise self.no_groups("join a chord")

    # -- revocations -----------------------------------------------------------------------

    #: Whether the store keeps revoked task ids (:meth:`add_revoked`), so a worker that
    #: starts after a revoke still refuses the task. A store that keeps nothing by id
    #: (``rpc://``, ``disabled://``) leaves revokes to the workers' memory, as Celery's.
    keeps_revokes = False

    async def add_revoked(self, task_ids: Sequence[str], until: float) -> None:
        """Record ``task_ids`` as revoked until unix time ``until`` (a later time recorded
        for an id wins). By default nothing is kept (``keeps_revokes``)."""

    async def revoked(self) -> dict[str, float]:
        """The ids revoked now, with the unix time each revoke ends."""
        return {}

    def no_groups(self, doing: str) -> NotImplementedError:
        """The error of a group or chord operation this store cannot do."""
        return NotImplementedError(
            f"the result store {self.describe()} cannot {doing}: use a Redis or SQLite"
            " result backend for chords and saved groups"
        )


@dataclass(frozen=True, slots=True)
class ChordPart:
    """A chord header task's outcome, as the store keeps it for the chord's body: Redis
    keeps ``[1, task_id, state, value]`` scored by ``index`` (Celery's layout)."""

    task_id: str
    #: The task's ``group_index`` (None: Celery scores it last, +inf).
    index: int | None
    #: SUCCESS, FAILURE or REVOKED.
    state: str
    #: The result, or the exception's record for a failure.
    value: Any


#: How long the caller that completed a chord holds it, to publish the body: Celery's
#: estimate of a publish with its default retry policy (21 s). Should that caller die, a
#: redelivered copy of a part may claim the chord again once this has passed.
CHORD_CLAIM_SECONDS = 21.0
#: How long a chord is known to be over after :meth:`ResultBackend.chord_done` (Celery's
#: ``"done"`` marker): a late copy of a part then neither counts nor completes it again.
CHORD_DONE_SECONDS = 300.0
#: The claim of a chord whose body is published.
DONE = "done"


def part_key(part: ChordPart) -> str:
    """What makes a part the same part twice: Celery's ``"<task id>:<index>"`` (``+inf``
    for no index), so a header that names one task twice still counts both."""
    return f"{part.task_id}:{'+inf' if part.index is None else part.index}"


def part_member(part: ChordPart) -> bytes:
    """The part as Celery keeps it: ``[1, task_id, state, value]`` in kombu's JSON."""
    return json_text([1, part.task_id, part.state, part.value]).encode()


def part_order(entry: tuple[int | None, bytes]) -> tuple[bool, int, bytes]:
    """Redis's order of a sorted set scored by index: by index (None, +inf, last), then by
    the member's bytes."""
    index, member = entry
    return index is None, 0 if index is None else index, member


def decode_part(member: bytes, index: int | None) -> ChordPart:
    """A part from its stored ``[1, task_id, state, value]`` and its index."""
    _, task_id, state, value = json_value(member)
    return ChordPart(task_id, index, state, value)


class KeyValueBackend(ResultBackend):
    """A store that keeps records under keys: the contract over ``_`` primitives, plus
    counters and leases.

    Public methods encode and validate here; transports implement the primitives. Counters
    and leases live in the backend's namespace (the memory URL, the SQLite file, Redis's
    database under ``global_keyprefix``, as Celery's own keys), apart from records.
    """

    async def store(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        data = self.encode(task_id, meta)
        await self._set(task_id, data, meta["status"] in READY_STATES, expires)

    async def store_event(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        if meta["status"] in READY_STATES:
            raise ValueError(f"{meta['status']} is a final state: store() it")
        await self._append(task_id, self.encode(task_id, meta), expires)

    async def get(self, task_id: str) -> Meta | None:
        data = await self._get(task_id)
        return None if data is None else decode(data)

    async def wait(self, task_id: str, timeout: float | None) -> Meta:
        return decode(await self._wait(task_id, timeout))

    async def forget(self, task_id: str) -> None:
        await self._delete(task_id)

    def stream(self, task_id: str, timeout: float | None) -> AsyncIterator[Meta]:
        return follow(
            task_id,
            timeout,
            watch=self._watch_task(task_id),
            read=lambda after: self._events_since(task_id, after),
            timed_out=lambda: self.not_ready(task_id, timeout),
        )

    # -- counters --------------------------------------------------------------------------

    async def incr(self, key: str, by: int = 1, *, expires: float | None = None) -> int:
        """Add ``by`` to the counter ``key`` (a missing or expired one is 0) in one atomic
        step, and return its new value: concurrent callers each see a different one.
        ``expires``: seconds the counter is kept after this increment (None: as before;
        a new counter is then kept until deleted)."""
        _check_expires(expires, "a counter's expires")
        return await self._incr(key, int(by), expires)

    async def get_counter(self, key: str) -> int:
        """The counter's value; 0 when it is missing or expired."""
        return await self._get_counter(key)

    async def delete_counter(self, key: str) -> None:
        """Delete the counter (deleting a missing one is fine)."""
        await self._delete_counter(key)

    # -- leases ----------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``holder`` for ``ttl`` seconds, in one atomic step.

        True when ``holder`` now holds it: it was free, expired, or held by ``holder``
        already (then it is extended to ``ttl`` from now: renew well before it ends). False
        while another holder's lease runs.
        """
        _check_expires(ttl, "a lease's ttl")
        if not holder:
            raise ValueError("a lease needs a holder: a name unique to the process")
        return await self._acquire_lease(name, holder, ttl)

    async def release_lease(self, name: str, holder: str) -> None:
        """Let the lease go if ``holder`` holds it (else nothing: another holder's lease
        is never ended), so another holder can take it at once."""
        await self._release_lease(name, holder)

    # -- run claims ------------------------------------------------------------------------

    async def advance_counter(self, key: str, to: int, *, expires: float | None = None) -> int:
        """Set the counter ``key`` to ``max(current, to)`` in one atomic step and return the
        value it had before (0 when missing or expired).

        How a scheduler claims a run: of any number of callers advancing to the same ``to``,
        exactly one gets a value below ``to`` back, and the claim is that caller's.
        ``expires`` is as :meth:`incr`'s, for a counter this call raises; one it leaves as it
        is (already at ``to`` or beyond) keeps its value and its expiry.
        """
        _check_expires(expires, "a counter's expires")
        return await self._advance_counter(key, int(to), expires)

    async def init_counter(self, key: str, value: int, *, expires: float | None = None) -> int:
        """Set the counter ``key`` to ``value`` if it is missing or expired, in one atomic
        step; return the value in force afterwards (the existing one, or ``value``).

        An existing counter is left as it is, expiry included: callers starting at once
        all get the first caller's value. ``expires`` (as :meth:`incr`'s) applies to a
        counter this call sets."""
        _check_expires(expires, "a counter's expires")
        return await self._init_counter(key, int(value), expires)

    # -- documents ---------------------------------------------------------------------------

    async def put_document(self, collection: str, name: str, data: bytes) -> None:
        """Store ``data`` as the document ``name`` of ``collection``, replacing one of that
        name. Documents are small named values that never expire (periodic-task entries a
        dashboard can edit); collections are separate namespaces."""
        await self._put_document(collection, name, bytes(data))

    async def documents(self, collection: str) -> dict[str, bytes]:
        """Every document of ``collection``, by name (empty for an unknown collection)."""
        return await self._documents(collection)

    async def delete_document(self, collection: str, name: str) -> bool:
        """Delete the document; True if it existed (deleting a missing one is fine)."""
        return await self._delete_document(collection, name)

    # -- rate limits -------------------------------------------------------------------------

    async def acquire_rate(self, key: str, limit: int, period: float, burst: int) -> float:
        """One start under the rate limit ``key``, shared by every process on the store:
        at most ``limit`` starts in any ``period`` seconds, at most ``burst`` of them in
        ``period * burst / limit`` seconds (``burst == limit``: no burst check).

        Returns 0.0 when the start is allowed (and recorded, by the store's clock), else the
        seconds to wait before trying again, in one atomic step that records nothing: never
        less than the time until the start that binds leaves its window, and spaced
        ``period / limit`` from the retry time handed to the caller refused before, unless
        that time is :data:`SHORT_WAIT` away or less (see the module docstring). Every key
        written expires once the limit is idle.
        """
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"a rate limit's limit must be an integer of 1 or more, not {limit!r}")
        if not isinstance(burst, int) or not 1 <= burst <= limit:
            raise ValueError(
                f"a rate limit's burst must be an integer from 1 to the limit ({limit}),"
                f" not {burst!r}"
            )
        if not (isinstance(period, int | float) and 0 < period < math.inf):
            raise ValueError(
                f"a rate limit's period must be a positive number of seconds, not {period!r}"
            )
        return await self._acquire_rate(key, limit, float(period), burst)

    # -- revocations -----------------------------------------------------------------------

    keeps_revokes = True

    async def add_revoked(self, task_ids: Sequence[str], until: float) -> None:
        ids = [task_id for task_id in task_ids if isinstance(task_id, str) and task_id]
        if ids:
            await self._add_revoked(ids, float(until))

    async def revoked(self) -> dict[str, float]:
        return await self._revoked()

    # -- the primitives --------------------------------------------------------------------

    @abstractmethod
    async def _set(self, task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        """Store ``data`` under ``task_id`` (replacing it) and wake waiters when ``ready``."""

    @abstractmethod
    async def _get(self, task_id: str) -> bytes | None:
        """Stored bytes, or None when absent or expired."""

    @abstractmethod
    async def _wait(self, task_id: str, timeout: float | None) -> bytes:
        """Block (without blocking the loop) until a ready record is stored; return it."""

    @abstractmethod
    async def _delete(self, task_id: str) -> None:
        """Remove the record and the event log if present."""

    @abstractmethod
    async def _append(self, task_id: str, data: bytes, expires: float | None) -> None:
        """Store ``data`` (not ready) as the record and append it to the event log, in the
        order of calls; wake the task's streams."""

    @abstractmethod
    async def _events_since(self, task_id: str, after: int | None) -> EventLog:
        """One consistent read: the events after the first ``after`` (``None``: only the
        last event, if any), how many events there are in all, and the record."""

    @abstractmethod
    def _watch_task(self, task_id: str) -> AbstractAsyncContextManager[Changes]:
        """Watch the task: a change stored once this is entered is never missed."""

    @abstractmethod
    async def _incr(self, key: str, by: int, expires: float | None) -> int:
        """Atomically add ``by`` to the counter (missing or expired: 0) and set its expiry
        when ``expires`` is given; the new value."""

    @abstractmethod
    async def _get_counter(self, key: str) -> int:
        """The counter's value, 0 when missing or expired."""

    @abstractmethod
    async def _delete_counter(self, key: str) -> None:
        """Remove the counter if present."""

    @abstractmethod
    async def _acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Atomically: take the lease if free or expired, extend it if ``holder`` has it."""

    @abstractmethod
    async def _release_lease(self, name: str, holder: str) -> None:
        """Atomically: delete the lease if ``holder`` has it."""

    @abstractmethod
    async def _advance_counter(self, key: str, to: int, expires: float | None) -> int:
        """Atomically: raise the counter to ``to`` if below it (missing or expired: 0), with
        ``expires`` if given (a counter not raised is left as it is); the value before."""

    @abstractmethod
    async def _init_counter(self, key: str, value: int, expires: float | None) -> int:
        """Atomically: set the counter (with ``expires``) if missing or expired; the value
        in force afterwards."""

    @abstractmethod
    async def _put_document(self, collection: str, name: str, data: bytes) -> None:
        """Store or replace the document."""

    @abstractmethod
    async def _documents(self, collection: str) -> dict[str, bytes]:
        """Every document of the collection, by name."""

    @abstractmethod
    async def _delete_document(self, collection: str, name: str) -> bool:
        """Remove the document; whether it was there."""

    @abstractmethod
    async def _acquire_rate(self, key: str, limit: int, period: float, burst: int) -> float:
        """Atomically, by the store's clock: drop starts older than ``period``; allowed
        (:func:`rate_wait` is 0): record the start, return 0.0; refused: return the wait
        :func:`spaced_retry` gives, keeping the key's next retry time. Arguments are
        checked already."""

    @abstractmethod
    async def _add_revoked(self, task_ids: list[str], until: float) -> None:
        """Record each id as revoked until ``until``, unless it is recorded until later."""

    @abstractmethod
    async def _revoked(self) -> dict[str, float]:
        """The ids recorded until a time still to come (expired ones may be dropped)."""


async def follow(
    task_id: str,
    timeout: float | None,
    *,
    watch: AbstractAsyncContextManager[Changes],
    read: Callable[[int | None], Awaitable[EventLog]],
    timed_out: Callable[[], Exception],
) -> AsyncIterator[Meta]:
    """:meth:`ResultBackend.stream` over a task's event log: ``watch`` tells of changes,
    ``read(after)`` reads the log atomically (the events after the first ``after``, or the
    last one for ``None``; their count; the record), ``timed_out()`` is the error to raise."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    async with watch as changes:
        log = await read(None)
        latest = log.record if is_ready(log.record) or not log.events else log.events[-1]
        if latest is not None:
            yield decode(latest)
            if is_ready(latest):
                return
        seen = log.count
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise timed_out()
            await changes.wait(left)
            log = await read(seen)
            seen = log.count
            for event in log.events:
                yield decode(event)
            if is_ready(log.record):
                assert log.record is not None
                yield decode(log.record)
                return


def rate_wait(starts: Sequence[float], at: float, limit: int, period: float, burst: int) -> float:
    """Seconds from ``at`` until a start is allowed under the limit (0.0: now), given the
    start times still in the period's window (``> at - period``), oldest first.

    A full window frees a place when its oldest start leaves it; with more starts than the
    limit (a lower limit than before) when enough of them have: the one ``limit`` from the
    newest. The burst window likewise, and the later of the two binds."""
    wait = 0.0
    if len(starts) >= limit:
        wait = starts[len(starts) - limit] + period - at
    if burst < limit:
        window = period * burst / limit
        recent = [start for start in starts if start > at - window]
        if len(recent) >= burst:
            wait = max(wait, recent[len(recent) - burst] + window - at)
    return wait


def spaced_retry(
    at: float, wait: float, next_retry: float, period: float, limit: int
) -> tuple[float, float]:
    """A refused caller's retry time, and the key's next retry time after it.

    The retry time is not before the caller's ``wait`` is over, nor before the key's
    ``next_retry``; the next one is ``period / limit`` (one caller's share of the limit)
    after it, so callers refused together come back one by one instead of all at once.

    A wait of :data:`SHORT_WAIT` or less (nor more than ``period / limit``) is the caller's
    own, and the line does not move: such a caller is one whose turn came some milliseconds
    before its start was free, and the end of the line would cost it a whole round."""
    share = period / limit
    if wait <= min(SHORT_WAIT, share):
        return at + wait, next_retry
    retry = max(next_retry, at + wait)
    return retry, retry + share


def _check_expires(seconds: float | None, what: str) -> None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {seconds!r}")


class Log:
    """An :class:`EventLog`."""

    __slots__ = ("count", "events", "record")

    def __init__(self, events: list[bytes], count: int, record: bytes | None) -> None:
        self.events = events
        self.count = count
        self.record = record


def is_ready(data: bytes | None) -> bool:
    """Whether stored bytes are a record in a final state: False for nothing stored, and
    for bytes that are not a record (a stream waits on; reading it says what is wrong)."""
    if data is None:
        return False
    try:
        record = json.loads(data)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("status") in READY_STATES


def decode(data: bytes) -> Meta:
    """A stored record as the dict it encodes."""
    meta = json_value(data)
    if not isinstance(meta, dict):
        raise ValueError(f"result record is not a JSON object: {data[:80]!r}")
    return meta
