"""The result backend contract: store and read Celery-format result records.

A record ("meta") is the dict Celery stores for a task: ``status``, ``result``,
``traceback``, ``children``, ``date_done``, ``task_id`` and, when set, ``parent_id`` and
``group_id``. Backends store it as JSON text, exactly as Celery's Redis backend does, so
that records are readable by Celery clients on shared stores.

Besides the record, a task that reports progress (a task that yields, ``update_state``) has
an event log: every state it stores with :meth:`ResultBackend.store_event` is appended to it,
so :meth:`ResultBackend.stream` can hand a caller every event, in order, however fast they
come. The log expires with the record.

Public methods encode and validate here; transports implement the ``_`` primitives.

Storing can fail two ways, and a backend says which (see :mod:`celeriac.errors`):
:class:`~celeriac.errors.BackendUnreachable` when the store is out of reach now (the worker
keeps the outcome and stores it again with backoff), :class:`~celeriac.errors.ResultRejected`
when it refused this record (the worker stores a FAILURE that says why instead). Every record
is checked against ``result_max_size`` here, in :meth:`ResultBackend.encode`, before any
backend sees it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from celeriac import errors
from celeriac.protocol.serialization import json_text, json_value
from celeriac.states import READY_STATES
from celeriac.transports.urls import redacted

Meta = dict[str, Any]


class Changes(Protocol):
    """Tells a stream that a task's record or event log may have changed."""

    async def wait(self, timeout: float | None) -> None:
        """Return after a change, or after ``timeout`` seconds (a re-check costs little)."""
        ...


class EventLog(Protocol):
    """What one atomic read of a task's event log returns (see ``_events_since``)."""

    events: list[bytes]
    count: int
    record: bytes | None


class ResultBackend(ABC):
    """Base class of every result store. Instances are bound to the loop they connected on."""

    schemes: tuple[str, ...] = ()

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

    async def connect(self) -> None:
        """Open connections; called once before any other method."""

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

    async def close(self) -> None:
        """Release connections; wake every waiter with an error."""

    async def store(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        """Write the task's current record; ``expires`` is seconds to keep it (None: forever).
        ``reply_to`` is the task message's: where a backend that delivers results sends them."""
        data = self.encode(task_id, meta)
        await self._set(task_id, data, meta["status"] in READY_STATES, expires)

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

    async def get(self, task_id: str) -> Meta | None:
        """The stored record, or None while nothing is stored (PENDING)."""
        data = await self._get(task_id)
        return None if data is None else _decode(data)

    async def wait(self, task_id: str, timeout: float | None) -> Meta:
        """Return the record once it is in a ready state.

        Raises :class:`celeriac.errors.TimeoutError` after ``timeout`` seconds. Waiting uses
        the transport's notifications; it never polls faster than the transport needs.
        """
        return _decode(await self._wait(task_id, timeout))

    async def forget(self, task_id: str) -> None:
        """Delete the record (and the task's event log)."""
        await self._delete(task_id)

    async def store_event(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        """Store a state that is not final (PROGRESS, STARTED, ...) as the record, as
        :meth:`store` does, and append it to the task's event log."""
        if meta["status"] in READY_STATES:
            raise ValueError(f"{meta['status']} is a final state: store() it")
        await self._append(task_id, self.encode(task_id, meta), expires)

    async def stream(self, task_id: str, timeout: float | None) -> AsyncIterator[Meta]:
        """The task's latest state (if it has one), then every later event in order, then
        its final record; the iterator ends after a final (ready) state.

        Raises :class:`celeriac.errors.TimeoutError` if no final state comes within
        ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._watch_task(task_id) as changes:
            log = await self._events_since(task_id, None)
            latest = log.record if _is_ready(log.record) or not log.events else log.events[-1]
            if latest is not None:
                yield _decode(latest)
                if _is_ready(latest):
                    return
            seen = log.count
            while True:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise self.not_ready(task_id, timeout)
                await changes.wait(left)
                log = await self._events_since(task_id, seen)
                seen = log.count
                for event in log.events:
                    yield _decode(event)
                if _is_ready(log.record):
                    assert log.record is not None
                    yield _decode(log.record)
                    return

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


class Log:
    """An :class:`EventLog`."""

    __slots__ = ("count", "events", "record")

    def __init__(self, events: list[bytes], count: int, record: bytes | None) -> None:
        self.events = events
        self.count = count
        self.record = record


def _is_ready(data: bytes | None) -> bool:
    if data is None:
        return False
    status = _decode(data).get("status")
    return status in READY_STATES


def _decode(data: bytes) -> Meta:
    meta = json_value(data)
    if not isinstance(meta, dict):
        raise ValueError(f"result record is not a JSON object: {data[:80]!r}")
    return meta
