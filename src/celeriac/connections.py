"""An app's connections: one broker and one result store per event loop, opened on first
use; and the publishing that goes through them (a message named for its reply queue, a
large batch in chunks).

Per loop, since a connection belongs to the loop it was opened on: the sync bridge's
thread, a worker's loop and a web server's loop each get their own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from celeriac import sending
from celeriac.config import Settings
from celeriac.protocol import events
from celeriac.protocol.clock import LamportClock
from celeriac.protocol.envelope import Envelope
from celeriac.transports import backend_from_url, broker_from_url
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker, PublishRequest

#: How many messages a batch hands the broker at a time: big enough that round trips
#: vanish in the cost of building messages, small enough that one write stays modest.
SEND_MANY_CHUNK = 1000

logger = logging.getLogger("celeriac")


class SentEvents:
    """``task-sent`` events for the tasks a client publishes (``task_send_sent_event``), on
    ``event_exchange`` after the messages: one message for one task, a ``task.multi`` batch
    for a batch. Fire-and-forget, as Celery's: an event that cannot be sent is logged (once
    per outage) and never fails the publish."""

    def __init__(self, exchange: str, clock: LamportClock) -> None:
        self.exchange = exchange
        self.clock = clock
        self._failing = False

    async def send(self, broker: Broker, envelopes: Sequence[Envelope], queue: str) -> None:
        if not envelopes:
            return
        sent = [
            events.event(
                "task-sent",
                events.task_sent_from_headers(envelope.headers, queue),
                hostname=str(envelope.headers.get("origin") or ""),
                clock=self.clock.forward(),
            )
            for envelope in envelopes
        ]
        payload: dict[str, object] | list[dict[str, object]] = sent if len(sent) > 1 else sent[0]
        key = events.BATCH_ROUTING_KEY if len(sent) > 1 else events.routing_key("task-sent")
        try:
            message = events.build_envelope(payload, sent[0]["hostname"])
            await broker.broadcast(self.exchange, message, key, kind="topic")
        except Exception as exc:  # a broker away, a batch too large: never the publish's
            if not self._failing:
                self._failing = True
                logger.warning("could not send task-sent events to %r: %s", self.exchange, exc)
            return
        self._failing = False


@dataclass(slots=True)
class Connection:
    """The broker and result store of one event loop."""

    broker: Broker
    backend: ResultBackend
    #: ``task-sent`` events, when the app sends them (None: it does not, and nothing is spent).
    sent_events: SentEvents | None = field(default=None)


class Connections:
    """The connections of one app, by event loop."""

    def __init__(self, conf: Settings, clock: LamportClock | None = None) -> None:
        self.conf = conf
        self.clock = clock or LamportClock()
        self._by_loop: dict[asyncio.AbstractEventLoop, Connection] = {}
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def current(self) -> Connection | None:
        """This loop's connection if it is open (never opens one)."""
        return self._by_loop.get(asyncio.get_running_loop())

    async def get(self) -> Connection:
        """This loop's connection, opened on first use."""
        loop = asyncio.get_running_loop()
        conn = self._by_loop.get(loop)
        if conn is not None:
            return conn
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            conn = self._by_loop.get(loop)
            if conn is None:
                conn = await self._open()
                self._forget_closed_loops()
                self._by_loop[loop] = conn
        return conn

    async def close(self) -> None:
        """Close this loop's connection, if it has one."""
        conn = self._by_loop.pop(asyncio.get_running_loop(), None)
        if conn is not None:
            # The store first: it may have borrowed the broker's connection.
            try:
                await conn.backend.close()
            finally:
                await conn.broker.close()

    async def _open(self) -> Connection:
        conf = self.conf
        broker = broker_from_url(
            conf.effective_broker_url(),
            max_message_size=conf.broker_max_message_size,
            options=conf.broker_transport_options,
            queue_max_priority=conf.task_queue_max_priority,
        )
        backend = backend_from_url(
            conf.effective_result_backend(),
            options=conf.result_backend_transport_options,
            broker_url=conf.effective_broker_url(),
        )
        backend.max_size = conf.result_max_size
        backend.share_connection(broker)
        await broker.connect()
        try:
            await backend.connect()
        except BaseException:
            await broker.close()
            raise
        sent_events = None
        if conf.task_send_sent_event:
            sent_events = SentEvents(conf.event_exchange, self.clock)
        return Connection(broker, backend, sent_events)

    def _forget_closed_loops(self) -> None:
        for loop in [loop for loop in self._by_loop if loop.is_closed()]:
            del self._by_loop[loop]
            self._locks.pop(loop, None)


def address(envelope: Envelope, backend: ResultBackend) -> None:
    """Name the backend's reply queue in a task message that names none (rpc://)."""
    if backend.reply_to and not envelope.properties.get("reply_to"):
        envelope.properties["reply_to"] = backend.reply_to


async def publish_in_chunks(
    conn: Connection, envelopes: Sequence[Envelope], queue: str, priority: int, eta: float | None
) -> None:
    """Publish ``envelopes`` in chunks of ``SEND_MANY_CHUNK`` (or whole, for a broker that
    writes a batch in one transaction), one chunk stored while the next is written. A failed
    chunk stops the rest and is raised, noting which calls were queued all the same."""
    if conn.backend.reply_to:
        for envelope in envelopes:
            address(envelope, conn.backend)
    loop = asyncio.get_running_loop()
    publishes: list[tuple[asyncio.Task[None], range]] = []
    step = max(len(envelopes), 1) if conn.broker.whole_batches else SEND_MANY_CHUNK
    try:
        for start in range(0, len(envelopes), step):
            if len(publishes) >= 2:
                # One chunk in flight: the broker stores it while the next is encoded
                # and written, so a batch costs the larger of the two, not their sum.
                before = publishes[-2][0]
                await asyncio.wait([before])
                if before.exception() is not None:
                    break
            span = range(start, min(start + step, len(envelopes)))
            with sending.collector_paused():
                chunk = [PublishRequest(queue, envelopes[i], priority, eta) for i in span]
            publishes.append((loop.create_task(conn.broker.publish_many(chunk)), span))
        if publishes:
            await asyncio.wait([task for task, _ in publishes])
    except asyncio.CancelledError:
        for task, _ in publishes:
            task.cancel()
        raise
    _raise_first_failure(publishes, len(envelopes))
    if conn.sent_events is not None:
        await conn.sent_events.send(conn.broker, envelopes, queue)


def _raise_first_failure(publishes: list[tuple[asyncio.Task[None], range]], total: int) -> None:
    """Raise the first chunk's error of a ``send_many``, noting which calls were queued all
    the same (the chunk after a failed one was already on its way, and may have made it)."""
    failed = [task.exception() for task, _ in publishes if task.exception() is not None]
    if not failed:
        return
    queued = [span for task, span in publishes if task.exception() is None]
    which = ", ".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else f"{s[0]}" for s in queued) or "none"
    error = failed[0]
    assert error is not None
    error.add_note(
        f"send_many queued {sum(map(len, queued))} of these {total} tasks before this error"
        f" (calls {which}, counting from 0); the rest were not sent"
    )
    raise error
