"""``rpc://`` results: each state is a message to the caller's own queue, as Celery's rpc backend
sends it, over the broker's RabbitMQ connection.

The connection: an app's result store borrows its broker's (:meth:`RpcBackend.share_connection`,
when the broker is an :class:`~celeriac.transports.amqp.broker.AmqpBroker` on the same URL), as
Celery's rpc backend sends over its producer's connection. It opens two channels of its own
there (one to publish states, one to consume its reply queue), asks the broker for the
connection whenever it needs one (the broker reconnects it after an outage) and, when it
closes, closes only those channels: the broker, closed after it, closes the connection. A
store given no broker (or one elsewhere) opens a connection of its own to the broker's URL.

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

Outages: the caller's reply queue is subscribed again after every outage, by a keeper task
with backoff, so a caller waiting in ``get()`` keeps waiting (until its own timeout) while
RabbitMQ is away. A worker's store raises :class:`~celeriac.errors.BackendUnreachable` while
RabbitMQ cannot be reached, and the worker stores again later. States are published
``mandatory``: RabbitMQ deletes a reply queue (auto-delete) when its caller's connection
drops, so just after an outage a state may find no queue until its caller has declared it
again; for ``_REDECLARE_GRACE`` seconds after this backend found a new connection (its own
reopened, or the broker's replaced) that is "unreachable, try again" too. Later, a missing
reply queue means its caller has gone, and its results are dropped as Celery drops them, with
one log line per queue. A state RabbitMQ refuses (over its ``max_message_size``) raises
:class:`~celeriac.errors.ResultRejected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq import spec
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from celeriac import errors
from celeriac.states import READY_STATES
from celeriac.transports.amqp import connection as _amqp
from celeriac.transports.amqp.broker import AmqpBroker
from celeriac.transports.amqp.connection import REFUSED, UNREACHABLE, refusal
from celeriac.transports.backend import (
    Changes,
    EventLog,
    Log,
    Meta,
    ResultBackend,
    decode,
    follow,
    is_ready,
)
from celeriac.transports.broker import Broker
from celeriac.transports.options import Option, checked_options
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

_OPTIONS = {
    "reply_queue_expires": Option(float, 86400.0),  # seconds a reply queue outlives its consumer
    "max_cached": Option(int, 10000),
    "connect_timeout": Option(float, 5.0),
}
#: Seconds after a reconnect during which a missing reply queue is waited for: its caller may
#: not have declared it again yet (RabbitMQ deleted it with the caller's dropped connection).
_REDECLARE_GRACE = 30.0
#: Longest pause between two attempts to subscribe again to the reply queue.
_RESUBSCRIBE_MAX_DELAY = 2.0
#: What subscribing again during an outage raises: wait and try again.
_OUTAGE: tuple[type[BaseException], ...] = (*UNREACHABLE, errors.BackendUnreachable)
#: Reply queues found gone, remembered (up to this many) to log each once.
_GONE_REMEMBERED = 1000
#: The longest closing waits for RabbitMQ to confirm that a channel closed.
_CLOSE_TIMEOUT = 5.0
#: What closing a channel already gone raises (it closed with its connection).
_GONE: tuple[type[BaseException], ...] = (*UNREACHABLE, amqp_errors.AMQPError, RuntimeError)


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
        opts = checked_options(self.options, _OPTIONS, "result_backend_transport_options", "rpc://")
        self.amqp_url = broker_url
        self.queue = str(uuid.uuid4())  # this caller's reply queue
        self.reply_to = self.queue
        self._queue_expires = float(opts["reply_queue_expires"])
        self._max_cached = int(opts["max_cached"])
        self._connect_timeout = float(opts["connect_timeout"])
        self._connection: AbstractConnection | None = None  # the last one used
        self._lender: AmqpBroker | None = None  # the broker whose connection this borrows
        self._publisher: AbstractChannel | None = None
        self._listener: AbstractChannel | None = None  # consumes the reply queue
        self._listening: asyncio.Task[None] | None = None  # keeps the reply queue subscribed
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._lock = asyncio.Lock()
        self._publisher_lock = asyncio.Lock()
        self._listen_lock = asyncio.Lock()
        self._reconnected_at: float | None = None  # loop time a lost connection was replaced
        self._gone: OrderedDict[str, None] = OrderedDict()  # reply queues found missing
        self._closed = False

    # -- connections -----------------------------------------------------------------------

    def share_connection(self, broker: Broker) -> None:
        """Borrow ``broker``'s connection when it is RabbitMQ at this store's URL: one
        connection per app instead of two. Called before :meth:`connect`."""
        if self._connection is not None:
            raise RuntimeError("share_connection() comes before the rpc:// store connects")
        if isinstance(broker, AmqpBroker) and broker.url == self.amqp_url:
            self._lender = broker

    async def _open(self) -> AbstractConnection:
        """The open connection; a new one (the broker replaced its, or this store's own was
        lost and opened again) starts the grace period of ``_unroutable``."""
        if self._closed:
            raise errors.BrokerError("the rpc:// result backend is closed")
        async with self._lock:
            try:
                connection = await self._current_connection()
            except UNREACHABLE as exc:
                raise errors.BackendUnreachable(
                    f"rpc:// results: RabbitMQ at {redacted(self.amqp_url)} is unreachable"
                    f" ({exc}); check that it runs and that broker_url points at it"
                ) from exc
            if connection is not self._connection:
                if self._connection is not None:  # it was lost: an outage, or a restart
                    self._reconnected_at = asyncio.get_running_loop().time()
                self._connection, self._publisher = connection, None
            return connection

    async def _current_connection(self) -> AbstractConnection:
        """The broker's connection when borrowed (the broker reopens it), else this store's
        own, opened again if it was lost."""
        if self._lender is not None:
            return await self._lender.open_connection()
        connection = self._connection
        if connection is None or connection.is_closed:
            connection = await _amqp.connect(self.amqp_url, timeout=self._connect_timeout)
        return connection

    async def close(self) -> None:
        """Stop listening and close this store's connection, or, when it is borrowed, this
        store's channels on it (which deletes the reply queue, auto-delete, as closing the
        connection would): the broker closes the connection after."""
        if self._closed:
            return
        self._closed = True
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        connection, self._connection = self._connection, None
        channels = [c for c in (self._listener, self._publisher) if c is not None]
        self._listener = self._publisher = None
        if self._lender is not None:
            await asyncio.gather(*(_close_channel(channel) for channel in channels))
        elif connection is not None:
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
        if reply_to:  # else its caller did not ask for results through rpc://
            await self._send(task_id, self.encode(task_id, meta), reply_to)

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

    async def _send(self, task_id: str, data: bytes, reply_to: str) -> None:
        """One state to the caller's queue, confirmed by RabbitMQ (so a task's ack comes
        after its result is safe). A lost connection is retried once at once; then
        :class:`~celeriac.errors.BackendUnreachable` says "store it again later"."""
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
                confirm = await channel.basic_publish(
                    data, exchange="", routing_key=reply_to, properties=properties, mandatory=True
                )
            except amqp_errors.PublishError:  # returned: no queue by that name
                self._unroutable(task_id, reply_to)
                return
            except REFUSED as exc:  # over max_message_size, say: it would fail again
                raise errors.ResultRejected(
                    f"rpc:// results: RabbitMQ at {redacted(self.amqp_url)} refused the state"
                    f" of task {task_id} ({len(data)} bytes): {exc}"
                ) from exc
            except UNREACHABLE as exc:
                if attempt == 2:
                    raise errors.BackendUnreachable(
                        f"rpc:// results: cannot reach RabbitMQ at {redacted(self.amqp_url)}"
                        f" ({type(exc).__name__}: {exc})"
                    ) from exc
                continue
            if not isinstance(confirm, spec.Basic.Ack):
                raise errors.BackendUnreachable(
                    f"rpc:// results: RabbitMQ did not take the state of task {task_id}"
                    f" ({confirm!r})"
                )
            return

    def _unroutable(self, task_id: str, reply_to: str) -> None:
        """A state came back: its reply queue does not exist. Just after an outage its
        caller may not have declared it again yet (unreachable: try again); otherwise the
        caller has gone, and the state is dropped, as Celery drops it, with a line per queue."""
        reconnected = self._reconnected_at
        if reconnected is not None:
            since = asyncio.get_running_loop().time() - reconnected
            if since < _REDECLARE_GRACE:
                raise errors.BackendUnreachable(
                    f"rpc:// results: the reply queue {reply_to} of task {task_id} does not"
                    f" exist yet, {since:.1f} s after the connection to RabbitMQ came back: its"
                    " caller may still be declaring it again"
                )
        if reply_to in self._gone:
            return
        self._gone[reply_to] = None
        if len(self._gone) > _GONE_REMEMBERED:
            self._gone.popitem(last=False)
        log.warning(
            "rpc:// results: the reply queue %s does not exist, so its caller has gone: the"
            " state of task %s and any later sent there are dropped, as Celery drops them",
            reply_to,
            task_id,
        )

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
        """Subscribe to the reply queue before anything waits, and keep it subscribed: the
        first time raises what went wrong; after that a keeper subscribes again after every
        outage, and waiters never see it."""
        if self._listening is not None and not self._listening.done():
            return
        async with self._listen_lock:
            if self._listening is not None and not self._listening.done():
                return
            channel = await self._subscribe()
            self._listening = asyncio.ensure_future(self._keep_listening(channel))

    async def _subscribe(self) -> AbstractChannel:
        """Declare the reply queue (Celery's flags) and consume it."""
        connection = await self._open()
        channel = self._listener = await connection.channel(publisher_confirms=False)
        arguments: dict[str, Any] = {"x-expires": max(1, round(self._queue_expires * 1000))}
        try:
            await channel.queue_declare(
                self.queue, durable=True, auto_delete=True, arguments=arguments
            )
            await channel.basic_consume(self.queue, self._arrived, no_ack=True)
        except REFUSED as exc:  # the user may not declare queues on this vhost, say
            raise refusal(exc, f"subscribe to the rpc:// reply queue {self.queue}") from exc
        return channel

    async def _keep_listening(self, channel: AbstractChannel) -> None:
        """Whenever the channel goes (RabbitMQ restarted, the network dropped), subscribe
        again with backoff until it works: states sent meanwhile wait in the queue, or are
        sent again by their worker (see ``_unroutable``). One line when it goes, one when
        it is back."""
        while True:
            with contextlib.suppress(Exception):
                await channel.closing
            if self._closed:
                return
            log.warning(
                "rpc:// results: lost the reply queue %s on RabbitMQ at %s; subscribing again"
                " with backoff (waiting callers keep waiting)",
                self.queue,
                redacted(self.amqp_url),
            )
            try:
                channel = await self._subscribe_again()
            except Exception as exc:  # not an outage (a refused declaration, say)
                log.error(
                    "rpc:// results: cannot subscribe to the reply queue %s again (%s: %s);"
                    " the next wait tries again and reports it",
                    self.queue,
                    type(exc).__name__,
                    exc,
                )
                return
            log.warning("rpc:// results: subscribed to the reply queue %s again", self.queue)

    async def _subscribe_again(self) -> AbstractChannel:
        delay = 0.0
        while True:
            try:
                return await self._subscribe()
            except _OUTAGE:
                delay = min(max(delay * 2, 0.05), _RESUBSCRIBE_MAX_DELAY)
                await asyncio.sleep(delay * random.uniform(0.75, 1.25))

    async def _arrived(self, message: DeliveredMessage) -> None:
        task_id = message.header.properties.correlation_id
        if not task_id:
            return
        task = self._task(str(task_id))
        data = message.body
        if not is_ready(data):
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

    async def get(self, task_id: str) -> Meta | None:
        """The latest state this caller received for the task (None: none yet)."""
        await self._listen()
        task = self._tasks.get(task_id)
        return None if task is None or task.record is None else decode(task.record)

    async def forget(self, task_id: str) -> None:
        """Drop what this caller received for the task (nothing is kept on the server)."""
        self._tasks.pop(task_id, None)

    async def wait(self, task_id: str, timeout: float | None) -> Meta:
        await self._listen()
        task = self._task(task_id)
        try:
            with task.watched() as changed:
                async with asyncio.timeout(timeout):
                    while not is_ready(task.record):
                        if self._closed:
                            raise errors.BrokerError("the rpc:// result backend was closed")
                        await changed.wait()  # through outages: the keeper listens again
                        changed.clear()
        except TimeoutError as exc:
            raise self.not_ready(task_id, timeout) from exc
        assert task.record is not None
        return decode(task.record)

    def stream(self, task_id: str, timeout: float | None) -> AsyncIterator[Meta]:
        return follow(
            task_id,
            timeout,
            watch=self._watching(task_id),
            read=lambda after: self._received(task_id, after),
            timed_out=lambda: self.not_ready(task_id, timeout),
        )

    async def _received(self, task_id: str, after: int | None) -> EventLog:
        """What arrived for the task: the events after the first ``after`` (None: the last
        one), their count and the latest record."""
        task = self._tasks.get(task_id)
        if task is None:
            return Log([], 0, None)
        events = task.events[-1:] if after is None else task.events[after:]
        return Log(list(events), len(task.events), task.record)

    @asynccontextmanager
    async def _watching(self, task_id: str) -> AsyncIterator[Changes]:
        await self._listen()
        with self._task(task_id).watched() as changed:
            yield _Changes(changed)


async def _close_channel(channel: AbstractChannel) -> None:
    """Close a channel of a borrowed connection, waiting ``_CLOSE_TIMEOUT`` at most for
    RabbitMQ's answer; one already gone (with its connection) needs nothing more."""
    with contextlib.suppress(*_GONE, TimeoutError):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await channel.close()


class _Changes:
    def __init__(self, changed: asyncio.Event) -> None:
        self._changed = changed

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        self._changed.clear()
