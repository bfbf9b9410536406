"""``rpc://`` results: each state is a message to the caller's own queue, as Celery's rpc backend
sends it, over the broker's RabbitMQ connection.

The caller (one backend per event loop) declares a reply queue named by a fresh uuid, as
Celery declares its own (durable, auto-delete, ``x-expires``), and its tasks carry that name
as ``reply_to``. A worker publishes every state of such a task (STARTED, PROGRESS, RETRY,
SUCCESS, FAILURE) to the default exchange with the reply queue as routing key and the task id
as ``correlation_id``, the body being the record Celery's other backends store.

Nothing is kept on the server: the caller keeps what it received (the latest record and the
events of each task, for the last ``max_cached`` tasks). So, as with Celery, only the process
that sent a task can read its result, and a record that arrived before it asked is still
there. A worker's every state is confirmed by RabbitMQ before it goes on (the final one
before the task's ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from aiormq import spec
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from celeriac import _amqp, errors
from celeriac._amqp import UNREACHABLE
from celeriac.backends.base import Changes, EventLog, Log, Meta, ResultBackend
from celeriac.config import redacted
from celeriac.serialization import json_text
from celeriac.states import READY_STATES

log = logging.getLogger(__name__)

_OPTIONS: dict[str, Any] = {
    "reply_queue_expires": 86400.0,  # seconds a reply queue outlives its last consumer
    "max_cached": 10000,
    "connect_timeout": 5.0,
}


class _Task:
    """What the caller received for one task, and who waits for more (an event each)."""

    __slots__ = ("events", "record", "watchers")

    def __init__(self) -> None:
        self.record: bytes | None = None
        self.events: list[bytes] = []
        self.watchers: set[asyncio.Event] = set()

    def changed(self) -> None:
        for watcher in self.watchers:
            watcher.set()

    @contextlib.contextmanager
    def watched(self) -> Iterator[asyncio.Event]:
        watcher = asyncio.Event()
        self.watchers.add(watcher)
        try:
            yield watcher
        finally:
            self.watchers.discard(watcher)


class RpcBackend(ResultBackend):
    """Results as messages to the caller's reply queue, on the broker's RabbitMQ."""

    schemes = ("rpc",)

    def __init__(
        self, url: str, *, options: dict[str, Any] | None = None, broker_url: str | None = None
    ) -> None:
        super().__init__(url, options=options, broker_url=broker_url)
        if not broker_url or not broker_url.startswith(("amqp://", "amqps://")):
            raise errors.ConfigurationError(
                f"result_backend rpc:// sends results over the broker, which must be RabbitMQ"
                f" (amqp://), not {redacted(broker_url or 'none')}: use a redis:// or sqlite://"
                " result backend with this broker"
            )
        unknown = sorted(set(self.options) - set(_OPTIONS))
        if unknown:
            raise errors.ConfigurationError(
                f"unknown result_backend_transport_options {', '.join(map(repr, unknown))}:"
                f" rpc:// knows {', '.join(sorted(_OPTIONS))}"
            )
        opts = {**_OPTIONS, **self.options}
        self.amqp_url = broker_url
        self.queue = str(uuid.uuid4())  # this caller's reply queue
        self.reply_to = self.queue
        self._queue_expires = float(opts["reply_queue_expires"])
        self._max_cached = int(opts["max_cached"])
        self._connect_timeout = float(opts["connect_timeout"])
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._listening: asyncio.Task[None] | None = None
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._lock = asyncio.Lock()
        self._publisher_lock = asyncio.Lock()
        self._closed = False

    # -- connections -----------------------------------------------------------------------

    async def _open(self) -> AbstractConnection:
        if self._closed:
            raise errors.BrokerError("the rpc:// result backend is closed")
        async with self._lock:
            connection = self._connection
            if connection is None or connection.is_closed:
                try:
                    connection = await _amqp.connect(self.amqp_url, timeout=self._connect_timeout)
                except UNREACHABLE as exc:
                    raise errors.BrokerError(
                        f"rpc:// results: RabbitMQ at {redacted(self.amqp_url)} is unreachable"
                        f" ({exc}); check that it runs and that broker_url points at it"
                    ) from exc
                self._connection, self._publisher = connection, None
            return connection

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*UNREACHABLE, RuntimeError):
                await connection.close()
        for task in self._tasks.values():
            task.changed()

    # -- the worker's side: publishing states ----------------------------------------------

    async def store(
        self,
        task_id: str,
        meta: Meta,
        *,
        expires: float | None,
        reply_to: str | None = None,
    ) -> None:
        await self._send(task_id, json_text(meta).encode(), reply_to)

    async def store_event(
        self,
        task_id: str,
        meta: Meta,
        *,
        expires: float | None,
        reply_to: str | None = None,
    ) -> None:
        if meta["status"] in READY_STATES:
            raise ValueError(f"{meta['status']} is a final state: store() it")
        await self.store(task_id, meta, expires=expires, reply_to=reply_to)  # one message too

    async def _send(self, task_id: str, data: bytes, reply_to: str | None) -> None:
        """One state to the caller's queue, confirmed by RabbitMQ (so a task's ack comes
        after its result is safe); a caller that gave no reply queue gets nothing (it did not
        ask for results through rpc://). A lost connection is retried once."""
        if not reply_to:
            return
        properties = spec.Basic.Properties(
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
            delivery_mode=1,
            headers={},
        )
        for attempt in (1, 2):
            try:
                channel = await self._publishing()
                await channel.basic_publish(
                    data, exchange="", routing_key=reply_to, properties=properties
                )
                return
            except UNREACHABLE as exc:
                if attempt == 2:
                    raise errors.BrokerError(
                        f"rpc:// results: cannot reach RabbitMQ at {redacted(self.amqp_url)}"
                        f" ({exc})"
                    ) from exc

    async def _publishing(self) -> AbstractChannel:
        """The one publishing channel: states sent on one channel arrive in the order sent.
        Made under a lock, so stores that start together share it (each making its own
        would let a task's SUCCESS overtake its PROGRESS)."""
        channel = self._publisher
        if channel is None or channel.is_closed:
            async with self._publisher_lock:
                channel = self._publisher
                if channel is None or channel.is_closed:
                    connection = await self._open()
                    channel = await connection.channel(publisher_confirms=True)
                    self._publisher = channel
        return channel

    # -- the caller's side: receiving them -------------------------------------------------

    async def _listen(self) -> None:
        """Declare the reply queue (Celery's flags) and consume it, before anything waits."""
        if self._listening is not None and not self._listening.done():
            return
        connection = await self._open()
        channel = await connection.channel(publisher_confirms=False)
        arguments: dict[str, Any] = {"x-expires": max(1, round(self._queue_expires * 1000))}
        await channel.queue_declare(self.queue, durable=True, auto_delete=True, arguments=arguments)
        await channel.basic_consume(self.queue, self._arrived, no_ack=True)
        self._listening = asyncio.ensure_future(self._watch(channel))

    async def _watch(self, channel: AbstractChannel) -> None:
        """When the channel goes, wake every waiter: they read the error or listen again."""
        with contextlib.suppress(Exception):
            await channel.closing
        if not self._closed:
            log.warning("rpc:// results: the reply queue's channel closed; listening again")
        for task in self._tasks.values():
            task.changed()

    async def _arrived(self, message: DeliveredMessage) -> None:
        task_id = message.header.properties.correlation_id
        if not task_id:
            return
        task = self._task(str(task_id))
        data = message.body
        if not _is_ready(data):
            task.events.append(data)
        task.record = data
        task.changed()

    def _task(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = _Task()
            while len(self._tasks) > self._max_cached:
                oldest = next(iter(self._tasks.values()))
                if oldest.watchers:  # someone still waits on it: over the limit a while
                    break
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(task_id)
        return task

    async def connect(self) -> None:
        """Connect and listen on the reply queue now: it must exist before the first task
        that names it is published, or its results would have nowhere to go. (It is
        auto-deleted when this backend closes.)"""
        await self._listen()

    async def _set(self, task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        raise NotImplementedError("rpc:// stores through store() and store_event()")

    async def _append(self, task_id: str, data: bytes, expires: float | None) -> None:
        raise NotImplementedError("rpc:// stores through store_event()")

    async def _get(self, task_id: str) -> bytes | None:
        await self._listen()
        task = self._tasks.get(task_id)
        return None if task is None else task.record

    async def _delete(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)

    async def _wait(self, task_id: str, timeout: float | None) -> bytes:
        await self._listen()
        task = self._task(task_id)
        try:
            with task.watched() as changed:
                async with asyncio.timeout(timeout):
                    while not _is_ready(task.record):
                        if self._closed:
                            raise errors.BrokerError("the rpc:// result backend was closed")
                        await changed.wait()
                        changed.clear()
                        await self._listen()  # again, if its channel was lost meanwhile
        except TimeoutError as exc:
            raise errors.TimeoutError(f"task {task_id} was not ready after {timeout} s") from exc
        assert task.record is not None
        return task.record

    async def _events_since(self, task_id: str, after: int | None) -> EventLog:
        task = self._tasks.get(task_id)
        if task is None:
            return Log([], 0, None)
        events = task.events[-1:] if after is None else task.events[after:]
        return Log(list(events), len(task.events), task.record)

    @asynccontextmanager
    async def _watch_task(self, task_id: str) -> AsyncIterator[Changes]:
        await self._listen()
        with self._task(task_id).watched() as changed:
            yield _Changes(changed)


class _Changes:
    def __init__(self, changed: asyncio.Event) -> None:
        self._changed = changed

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        self._changed.clear()


def _is_ready(data: bytes | None) -> bool:
    if data is None:
        return False
    from celeriac.serialization import json_value

    record = json_value(data)
    return isinstance(record, dict) and record.get("status") in READY_STATES
