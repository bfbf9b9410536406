"""``amqp://`` and ``amqps://``: RabbitMQ queues declared as Celery declares them.

Tasks go to the default exchange with the queue's name as routing key, as Celery 5 publishes
them, into durable queues with Celery's flags (``x-max-priority`` when
``task_queue_max_priority`` is set), so real Celery workers and producers share them. Every
publish waits for RabbitMQ's confirm and is persistent.

What celeriac adds, and why:

* **ETAs never sit unacknowledged.** RabbitMQ closes a channel that holds a message longer
  than its ``consumer_timeout`` (30 min by default), which is how Celery's far-future ETAs
  get redelivered in a loop. Here a message with a future ETA waits in a delay queue
  instead: ``celeriac.delay.<queue>.<ms>``, one per power of four milliseconds, whose TTL
  dead-letters it back to its queue. A message that comes back before its time (delays are
  made of several such hops) is sent on to the next one; the ``x-celeriac-eta`` header says
  when it is due. No plugin is needed, and whichever worker gets it runs it, once.
* **Priorities across queues.** Each queue has a consumer of its own (prefetch per
  consumer); what arrives waits in a local buffer that hands out the highest priority
  first, up to the consumer's prefetch window.
* **Long holds are renewed.** The same timeout would close the channel of a long
  ``acks_late`` task (and put back every delivery on it): a delivery held for half of
  ``consumer_timeout`` (option, seconds; RabbitMQ's 30 minutes unless set) moves to a parking
  queue of this worker's own (see ``parking.py``), and one that waited that long in the
  local buffer goes back to its queue.
* **Dead letters** are copies in the durable queue ``celeriac.dead`` (option
  ``dead_letter_queue``) with the reason, queue and time in ``x-celeriac-*`` headers; the
  original is then acknowledged.

A delivery is settled on the channel it came on. When that channel is gone (the connection
dropped), RabbitMQ has already put the message back, so settling it does nothing.

**Closing waits for the acks.** A channel closes only once every ack (reject, move) begun on
it has been written: closing it as soon as the last delivery was *settled in the books* let
its ``Channel.Close`` overtake acks still waiting for room in aiormq's writer queue (ten
frames; a frame woken for a freed slot can lose it to a newcomer, so order is not kept under
a burst). RabbitMQ then put back tasks that had run, and the late acks, arriving on a closed
channel, made it close the whole connection, stranding every frame still waiting: a graceful
stop under a deep backlog ran finished tasks again and could hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq import spec
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from celeriac.errors import BrokerError, BrokerUnreachable
from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp import connection as _amqp
from celeriac.transports.amqp import fanout
from celeriac.transports.amqp.connection import REFUSED, UNREACHABLE, refusal
from celeriac.transports.amqp.parking import Parking
from celeriac.transports.amqp.properties import Properties
from celeriac.transports.background import Background
from celeriac.transports.broker import (
    Broker,
    DeadLetter,
    Delivery,
    ExchangeKind,
    PrefetchWindow,
    PublishRequest,
    Subscription,
    check_consume,
    now,
)
from celeriac.transports.options import Option, checked_options
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

_OPTIONS = {
    "dead_letter_queue": Option(str, "celeriac.dead"),
    "delay_queue_prefix": Option(str, "celeriac.delay"),
    "connect_timeout": Option(float, 5.0),
    "consumer_timeout": Option(float, 1800.0),  # RabbitMQ's default, in seconds
}
ETA_HEADER = "x-celeriac-eta"
REASON_HEADER = "x-celeriac-reason"
QUEUE_HEADER = "x-celeriac-queue"
DIED_AT_HEADER = "x-celeriac-died-at"
#: Headers RabbitMQ or this transport add on the way: not part of the message handed out.
_TRANSIT_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-celeriac-")
#: Delay queues hold 4**k ms, k = 0..15 (the longest, about 12.4 days, fits x-message-ttl).
_DELAY_LEVELS: list[int] = [int(4**k) for k in range(16)]
#: AMQP basic properties, by the names celeriac's envelopes use (kombu's).
_PROPERTIES = {
    "delivery_mode": "delivery_mode",
    "priority": "priority",
    "correlation_id": "correlation_id",
    "reply_to": "reply_to",
    "expiration": "expiration",
    "timestamp": "timestamp",
    "type": "message_type",
    "user_id": "user_id",
    "app_id": "app_id",
}
#: Reconnection backoff: this doubled on each failed attempt, up to _BACKOFF_MAX (seconds).
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
#: The longest each step of closing waits: the acks in flight, a channel's or the
#: connection's closing handshake. What is not acknowledged by then goes back to its queue.
_CLOSE_TIMEOUT = 5.0
#: What closing something already gone raises (RabbitMQ put back what it held).
_GONE_ERRORS: tuple[type[BaseException], ...] = (
    *UNREACHABLE,
    amqp_errors.AMQPError,
    RuntimeError,
)
#: What a failed renewal of a hold can raise: the hold stays as it was, to be tried again.
_RENEWAL_ERRORS: tuple[type[BaseException], ...] = (
    *UNREACHABLE,
    TimeoutError,
    amqp_errors.AMQPError,
    BrokerError,
)


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0, 1, ...) to reach RabbitMQ.
    The exponent stops growing at the cap: an outage of hours must not overflow a float."""
    return min(_BACKOFF_MAX, _BACKOFF_FIRST * 2.0 ** min(attempt, 16))


def delay_level(milliseconds: float) -> int:
    """The delay queue for a wait of ``milliseconds``: the longest level not beyond it."""
    wanted = max(1, math.ceil(milliseconds))
    return max(level for level in _DELAY_LEVELS if level <= wanted)


def to_properties(envelope: Envelope, priority: int, headers: dict[str, Any]) -> Any:
    """The AMQP properties of ``envelope`` (persistent unless it says otherwise)."""
    fields: dict[str, Any] = {
        "content_type": envelope.content_type,
        "content_encoding": envelope.content_encoding,
        "headers": headers,
        "delivery_mode": 2,
    }
    for name, attribute in _PROPERTIES.items():
        value = envelope.properties.get(name)
        if value is not None:
            fields[attribute] = value
    fields["priority"] = priority
    expiration = str(fields.get("expiration", "1"))
    if expiration.lstrip("-").isdigit() and int(expiration) <= 0:
        # Expired already: RabbitMQ would drop it unseen, and its caller would wait for a
        # result forever. A worker gets it instead and records it REVOKED.
        del fields["expiration"]
    return Properties(**fields)


def to_envelope(message: DeliveredMessage) -> Envelope:
    """A delivered message as an envelope, without the headers added in transit. (aiormq
    stamps every publish with a ``message_id`` for its own bookkeeping: it is dropped.)"""
    props = message.header.properties
    headers = {
        key: value
        for key, value in (props.headers or {}).items()
        if not key.startswith(_TRANSIT_HEADERS)
    }
    properties = {}
    for name, attribute in _PROPERTIES.items():
        value = getattr(props, attribute, None)
        if value is not None:
            properties[name] = value
    return Envelope(
        message.body, props.content_type or "", props.content_encoding or "", headers, properties
    )


class _Cutoffs:
    """Writes on a channel, cut short when the channel closes.

    aiormq hands every frame to its connection's writer through a queue of ten; a frame
    waiting for room there is never woken once the connection is gone. An ack caught in a
    burst when the connection drops would wait forever, and a worker's stop with it, though
    RabbitMQ has put the message back already: giving up on it loses nothing.
    """

    def __init__(self) -> None:
        self._waiting: dict[AbstractChannel, set[asyncio.Timeout]] = {}

    async def run(self, channel: AbstractChannel, writing: Awaitable[Any]) -> None:
        """Await ``writing``; a ``TimeoutError`` (one of ``UNREACHABLE``) if ``channel`` closes
        first."""
        waiting = self._waiting.get(channel)
        if waiting is None:
            waiting = self._waiting[channel] = set()
            channel.closing.add_done_callback(partial(self._closed, channel))
        cutoff = asyncio.timeout(None)
        waiting.add(cutoff)
        try:
            async with cutoff:
                await writing
        finally:
            waiting.discard(cutoff)

    async def settle(self, channel: AbstractChannel, settling: Awaitable[Any]) -> None:
        """An ack or reject on a channel that may close meanwhile (RabbitMQ then put the
        message back)."""
        # A channel RabbitMQ closed for a refusal (406 on an unknown delivery tag) is a lost
        # channel too: its unsettled messages went back to their queues.
        with contextlib.suppress(*UNREACHABLE, *REFUSED):
            await self.run(channel, settling)

    def _closed(self, channel: AbstractChannel, _: object) -> None:
        for cutoff in self._waiting.pop(channel, ()):
            cutoff.reschedule(0.0)  # at once


@dataclass(eq=False, slots=True)
class _Tag:
    """What settles a delivery: the consumer and channel it came on, and its number there."""

    consumer: _Consumer
    channel: AbstractChannel
    number: int
    message: DeliveredMessage
    queue: str
    since: float = 0.0  # when the holding delivery came (monotonic): consumer_timeout counts
    parked: bool = False  # held as a copy in a parking queue
    renewing: bool = False


@dataclass(order=True, slots=True)
class _Buffered:
    rank: tuple[int, int]  # (-priority, arrival): the most urgent, then the oldest, first
    queue: str = field(compare=False)
    channel: AbstractChannel = field(compare=False)
    message: DeliveredMessage = field(compare=False)
    arrived: float = field(compare=False, default=0.0)


class AmqpBroker(Broker):
    """Celery-compatible queues on RabbitMQ (AMQP 0-9-1), through aiormq.

    Options (``broker_transport_options``): ``dead_letter_queue`` (``celeriac.dead``),
    ``delay_queue_prefix`` (``celeriac.delay``), ``connect_timeout`` (5 s),
    ``consumer_timeout`` (the server's, in seconds: 1800 unless set there). A heartbeat
    is set in the URL (``?heartbeat=30``), as aiormq reads it.
    """

    hides_eta = True

    def __init__(self, url: str, **settings: Any) -> None:  # settings: see Broker
        super().__init__(url, **settings)
        opts = checked_options(
            self.options, _OPTIONS, "broker_transport_options", "the AMQP transport"
        )
        self.dead_letter_queue = str(opts["dead_letter_queue"])
        self.delay_prefix = str(opts["delay_queue_prefix"])
        self.connect_timeout = float(opts["connect_timeout"])
        consumer_timeout: float = opts["consumer_timeout"]
        if not consumer_timeout > 0:
            raise BrokerError(
                f"broker_transport_options consumer_timeout={opts['consumer_timeout']!r}: give"
                " RabbitMQ's consumer_timeout in seconds (1800 unless its configuration says)"
            )
        #: A delivery held this long (seconds) is moved before RabbitMQ's timeout falls.
        self.renew_after = consumer_timeout / 2
        self._parking: Parking | None = None
        self._connection: AbstractConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._publisher: AbstractChannel | None = None
        self._publisher_lock = asyncio.Lock()
        self._declared: set[str] = set()  # on this connection
        self._exchanges: set[str] = set()  # broadcast exchanges declared on this connection
        self.queues: set[str] = set()  # every task queue this broker used (queue_sizes)
        self.declared: set[str] = set()  # every queue and exchange it ever declared
        #: Consumers until their channel is closed (a stopped one waits for its acks).
        self._consumers: set[_Consumer] = set()
        self._cutoffs = _Cutoffs()
        self._closed = False
        self._outage_logged = False

    # -- life cycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        self._connecting = asyncio.Lock()
        try:
            await self._open()
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc

    async def ping(self) -> None:
        try:
            await self._open()
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc

    async def close(self) -> None:
        """Stop consuming, let every ack already begun reach RabbitMQ, then close: whatever
        is still unsettled goes back to its queue. Each step waits ``_CLOSE_TIMEOUT`` at most."""
        if self._closed:
            return
        await self.close_subscriptions()
        self._closed = True
        consumers = list(self._consumers)
        for consumer in consumers:
            consumer.wake()
        await self._within(
            "closing the consumers' channels", asyncio.gather(*(c.close() for c in consumers))
        )
        if self._parking is not None:
            await self._within("closing the parking channel", self._parking.close())
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._within("closing the connection", connection.close())

    async def _within(self, step: str, closing: Awaitable[Any]) -> None:
        """One step of ``close()``, bounded: a broker that stopped answering must not hold
        up a worker's exit."""
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await closing
        except TimeoutError:
            log.warning(
                "broker: %s took over %g s; going on (RabbitMQ puts back what was not"
                " acknowledged): check that RabbitMQ at %s answers",
                step,
                _CLOSE_TIMEOUT,
                redacted(self.url),
            )
        except _GONE_ERRORS:
            pass

    async def _open(self) -> AbstractConnection:
        """The connection, (re)opened on demand; its loss closes every channel on it. While
        RabbitMQ is away this raises one of ``UNREACHABLE`` (consumers wait and retry)."""
        if self._closed:
            raise BrokerError(f"the broker {redacted(self.url)} is closed")
        connection = self._connection
        if connection is not None and not connection.is_closed:
            return connection
        assert self._connecting is not None, "connect() first"
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.is_closed:
                connection = await _amqp.connect(self.url, timeout=self.connect_timeout)
                if self._outage_logged:
                    log.warning("broker: RabbitMQ at %s is reachable again", redacted(self.url))
                    self._outage_logged = False
                self._connection = connection
                self._publisher = None
                self._declared.clear()
                self._exchanges.clear()
            return connection

    async def open_connection(self) -> AbstractConnection:
        """The broker's connection, opened again on demand, for a client on the same server
        that opens none of its own (the ``rpc://`` result store). Such a client closes only
        the channels it made; the connection is the broker's to close. While RabbitMQ is
        away this raises one of ``UNREACHABLE``; after :meth:`close`, a BrokerError."""
        return await self._open()

    async def channel(self, *, confirms: bool = False) -> AbstractChannel:
        """A new channel on the connection (consumers each get one; close it when done)."""
        connection = await self._open()
        return await connection.channel(publisher_confirms=confirms)

    async def _publishing(self) -> AbstractChannel:
        """The one publishing channel, made under a lock: publishes that start together
        share it instead of each opening a channel of its own."""
        channel = self._publisher
        if channel is None or channel.is_closed:
            async with self._publisher_lock:
                channel = self._publisher
                if channel is None or channel.is_closed:
                    channel = self._publisher = await self.channel(confirms=True)
        return channel

    def _unreachable(self, exc: BaseException) -> BrokerUnreachable:
        error = BrokerUnreachable(
            f"RabbitMQ at {redacted(self.url)} is unreachable ({type(exc).__name__}: {exc});"
            " check that it runs and that broker_url points at it"
        )
        error.__cause__ = exc
        return error

    async def _outage(self, exc: BaseException, attempt: int) -> None:
        """Log once per outage, then back off before the next attempt."""
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "broker: RabbitMQ at %s is unreachable (%s); retrying with backoff",
                redacted(self.url),
                exc,
            )
        await asyncio.sleep(backoff(attempt))

    # -- declaring -------------------------------------------------------------------------

    def _queue_arguments(self) -> dict[str, Any] | None:
        if self.queue_max_priority is None:
            return None
        return {"x-max-priority": self.queue_max_priority}

    async def _declare(self, channel: AbstractChannel, queue: str) -> int:
        """Declare a task queue as Celery does; the number of messages ready in it."""
        count = await _amqp.declare_queue(channel, queue, self._queue_arguments())
        if queue not in self._declared:
            await _amqp.declare_direct(channel, queue)
            self._declared.add(queue)
        self.queues.add(queue)
        self.declared.add(queue)
        return count

    def _delay_queue(self, queue: str, level: int) -> tuple[str, dict[str, Any]]:
        """The delay queue of ``queue`` that holds messages ``level`` ms, and its arguments."""
        arguments = {
            "x-message-ttl": level,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        }
        return f"{self.delay_prefix}.{queue}.{level}", arguments

    async def _declare_delay(self, channel: AbstractChannel, queue: str, level: int) -> str:
        name, arguments = self._delay_queue(queue, level)
        if name not in self._declared:
            await _amqp.declare_queue(channel, name, arguments)
            self._declared.add(name)
            self.declared.add(name)
        return name

    def parking(self) -> Parking:
        if self._parking is None:
            self._parking = Parking(self.channel, self._publish_copy, "celeriac.parked")
        return self._parking

    async def _publish_copy(
        self, queue: str, message: DeliveredMessage, headers: dict[str, Any]
    ) -> None:
        envelope = to_envelope(message)
        await self._send(
            await self._publishing(), queue, envelope, _priority(message), extra_headers=headers
        )

    # -- producing -------------------------------------------------------------------------

    async def _publish(self, requests: Sequence[PublishRequest]) -> None:
        """Every request at once, each confirmed; a lost connection is retried once (a
        message whose confirm was lost with it may then be stored twice: at least once)."""
        queues = ", ".join(sorted({repr(request.queue) for request in requests}))
        try:
            try:
                await self._publish_all(requests)
            except UNREACHABLE:
                try:
                    await self._publish_all(requests)
                except UNREACHABLE as exc:
                    raise self._unreachable(exc) from exc
        except REFUSED as exc:  # too large for the server, say
            raise refusal(exc, f"take a message for queue {queues}") from exc

    async def _publish_all(self, requests: Sequence[PublishRequest]) -> None:
        channel = await self._publishing()
        for queue in {request.queue for request in requests} - self._declared:
            await self._declare(channel, queue)
        moment = now()
        sends = [
            self._send(
                channel,
                r.queue,
                r.envelope,
                r.priority,
                eta=r.eta if r.eta is not None and r.eta > moment else None,
            )
            for r in requests
        ]
        if len(sends) == 1:
            await sends[0]  # one delay(): no task to wrap it in
        else:
            await asyncio.gather(*sends)

    async def _send(
        self,
        channel: AbstractChannel,
        queue: str,
        envelope: Envelope,
        priority: int,
        *,
        eta: float | None = None,
        extra_headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
    ) -> None:
        headers = {**envelope.headers, **(extra_headers or {})}
        target = routing_key or queue
        if eta is not None:
            headers[ETA_HEADER] = repr(eta)
            level = delay_level((eta - now()) * 1000)
            target = await self._declare_delay(channel, queue, level)
        properties = to_properties(envelope, priority, headers)
        if eta is not None:
            properties.expiration = None  # the delay queue's TTL, not the message's, applies
        confirm = await channel.basic_publish(
            envelope.body, exchange="", routing_key=target, properties=properties
        )
        if not isinstance(confirm, spec.Basic.Ack):
            raise BrokerError(f"RabbitMQ did not take a message for {target!r}: {confirm!r}")

    # -- broadcasting ----------------------------------------------------------------------

    async def _broadcast(
        self, exchange: str, envelope: Envelope, routing_key: str, kind: ExchangeKind
    ) -> None:
        """Publish to the exchange, declared as Celery declares it (see ``fanout.py``),
        confirmed; a lost connection is retried once, as a publish is."""
        try:
            try:
                await self._broadcast_once(exchange, envelope, routing_key, kind)
            except UNREACHABLE:
                try:
                    await self._broadcast_once(exchange, envelope, routing_key, kind)
                except UNREACHABLE as exc:
                    raise self._unreachable(exc) from exc
        except REFUSED as exc:
            raise refusal(exc, f"take a broadcast on exchange {exchange!r}") from exc

    async def _broadcast_once(
        self, exchange: str, envelope: Envelope, routing_key: str, kind: ExchangeKind
    ) -> None:
        channel = await self._publishing()
        if exchange not in self._exchanges:
            await fanout.declare_exchange(channel, exchange, kind)
            self._exchanges.add(exchange)
            self.declared.add(exchange)
        properties = to_properties(envelope, 0, dict(envelope.headers))
        confirm = await channel.basic_publish(
            envelope.body, exchange=exchange, routing_key=routing_key, properties=properties
        )
        if not isinstance(confirm, spec.Basic.Ack):
            raise BrokerError(f"RabbitMQ did not take a broadcast on {exchange!r}: {confirm!r}")

    def _subscribe(self, exchange: str, routing_key: str, kind: ExchangeKind) -> Subscription:
        self.declared.add(exchange)
        return fanout.AmqpSubscription(
            self.channel, to_envelope, redacted(self.url), exchange, routing_key, kind
        )

    # -- consuming -------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], *, prefetch: int
    ) -> AsyncGenerator[Delivery, None]:
        check_consume(queues, prefetch)
        if self._closed:
            raise BrokerError(f"the broker {redacted(self.url)} is closed")
        consumer = _Consumer(self, list(dict.fromkeys(queues)), prefetch)
        self._consumers.add(consumer)
        consumer.start_sweeping()
        try:
            while not self._closed:
                delivery = await consumer.next()
                if delivery is not None:
                    yield delivery
        finally:
            await consumer.stop()  # it leaves self._consumers once its channel is closed

    # -- settling --------------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        tag: _Tag = delivery.tag
        consumer = tag.consumer
        if consumer.settle(tag):
            try:
                await self._cutoffs.settle(tag.channel, tag.channel.basic_ack(tag.number))
            finally:
                consumer.settled()

    async def requeue(self, delivery: Delivery) -> None:
        tag: _Tag = delivery.tag
        consumer = tag.consumer
        if consumer.settle(tag):
            # A parked copy goes home by its parking queue's dead-letter route (put back, it
            # would only wait there for its TTL first).
            rejecting = tag.channel.basic_reject(tag.number, requeue=not tag.parked)
            try:
                await self._cutoffs.settle(tag.channel, rejecting)
            finally:
                consumer.settled()

    async def defer(self, delivery: Delivery, eta: float) -> None:
        tag: _Tag = delivery.tag
        consumer = tag.consumer
        if consumer.settle(tag):
            try:
                await self._move(tag, partial(self._delay, tag.queue, tag.message, eta))
            finally:
                consumer.settled()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        tag: _Tag = delivery.tag
        consumer = tag.consumer
        if not consumer.settle(tag):
            return
        headers = {REASON_HEADER: reason, QUEUE_HEADER: tag.queue, DIED_AT_HEADER: repr(now())}
        envelope = to_envelope(tag.message)

        async def bury(channel: AbstractChannel) -> None:
            if self.dead_letter_queue not in self._declared:
                await self._declare_dead(channel)
            await self._send(
                channel,
                tag.queue,
                envelope,
                _priority(tag.message),
                extra_headers=headers,
                routing_key=self.dead_letter_queue,
            )

        try:
            await self._move(tag, bury)
        finally:
            consumer.settled()

    async def _delay(
        self, queue: str, message: DeliveredMessage, eta: float, channel: AbstractChannel
    ) -> None:
        await self._send(channel, queue, to_envelope(message), _priority(message), eta=eta)

    async def _move(self, tag: _Tag, publish: Any) -> None:
        """Publish where the message goes next, then ack it. If its channel is gone,
        RabbitMQ has put it back already: it is not published (that would duplicate it)."""
        attempt = 0
        while not tag.channel.is_closed:
            try:
                channel = await self._publishing()
                await self._cutoffs.run(channel, publish(channel))
                break
            except UNREACHABLE as exc:
                if self._closed:
                    return
                await self._outage(exc, attempt)
                attempt += 1
            except REFUSED as exc:
                # Left unacknowledged: RabbitMQ hands it out again when its channel closes.
                log.error("%s", refusal(exc, "take a message moved to its next queue"))
                return
        else:
            return
        await self._cutoffs.settle(tag.channel, tag.channel.basic_ack(tag.number))

    # -- administration --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[AbstractChannel]:
        """A channel of its own for an administrative call, closed after it."""
        try:
            channel = await self.channel()
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        try:
            yield channel
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        except REFUSED as exc:
            raise refusal(exc, "answer an administrative call") from exc
        finally:
            await _close(channel)

    async def purge(self, queue: str) -> int:
        async with self._admin() as channel:
            await self._declare(channel, queue)
            purged = 0
            for name in [queue, *[n for n, _ in await self._delay_counts(channel, queue)]]:
                purged += int((await channel.queue_purge(name)).message_count or 0)
            return purged

    async def queue_sizes(self, queues: Sequence[str] = ()) -> dict[str, int]:
        """Ready messages, plus those waiting in delay queues, plus those this broker's
        consumers hold, for every queue this broker used and those named (RabbitMQ lists
        neither its queues nor other consumers' unacknowledged messages)."""
        sizes: dict[str, int] = {}
        async with self._admin() as channel:
            for queue in sorted({*self.queues, *queues}):
                size = await self._declare(channel, queue)
                size += sum(count for _, count in await self._delay_counts(channel, queue))
                size += sum(consumer.holding(queue) for consumer in self._consumers)
                if size:
                    sizes[queue] = size
        return sizes

    async def _delay_counts(self, channel: AbstractChannel, queue: str) -> list[tuple[str, int]]:
        """Every delay queue of ``queue`` with the messages in it (declaring them is how to
        know: a passive declaration of a missing queue would close the channel)."""
        counts = []
        for level in _DELAY_LEVELS:
            name, arguments = self._delay_queue(queue, level)
            counts.append((name, await _amqp.declare_queue(channel, name, arguments)))
            self._declared.add(name)
            self.declared.add(name)
        return counts

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Reads the whole dead-letter queue (without taking anything: the channel is closed
        before any ack, which puts every message back where it was) and keeps the newest."""
        if limit <= 0:
            return []
        letters: list[DeadLetter] = []
        async with self._admin() as channel:
            for _ in range(await self._declare_dead(channel)):
                message = await channel.basic_get(self.dead_letter_queue)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                letters.append(_dead_letter(message))
        return letters[::-1][:limit]

    async def dead_letter_count(self) -> int:
        async with self._admin() as channel:
            return await self._declare_dead(channel)

    async def _declare_dead(self, channel: AbstractChannel) -> int:
        """Declare the dead-letter queue; how many messages are in it."""
        count = await _amqp.declare_queue(channel, self.dead_letter_queue)
        self._declared.add(self.dead_letter_queue)
        self.declared.add(self.dead_letter_queue)
        return count


class _Consumer:
    """One ``consume()``: a channel with a consumer per queue, a buffer that hands out the
    most urgent message first, and the window of deliveries handed out and not settled.

    Once stopped, its channel closes when nothing handed out is held any more *and* every
    settle begun has been written (``settle()``/``settled()``), never before: closing the
    channel puts back whatever it has not acknowledged.
    """

    def __init__(self, broker: AmqpBroker, queues: list[str], prefetch: int) -> None:
        self.broker = broker
        self.queues = queues
        self.prefetch = prefetch
        self.window = PrefetchWindow(prefetch)
        self.channel: AbstractChannel | None = None
        self._buffer: list[_Buffered] = []
        self._arrivals = itertools.count()
        self._waiter: asyncio.Future[None] | None = None  # next() waiting for news
        self._held: set[_Tag] = set()
        self._settling = 0  # settles begun and not yet written: the channel stays open
        self._idle: asyncio.Future[None] | None = None  # close() waiting for them
        self._closing: asyncio.Future[None] | None = None  # the channel's, once begun
        self._stopped = False
        self._consumer_tags: list[str] = []
        self._tasks = Background()  # re-delays, renewals, a closing
        self._sweeper: asyncio.Task[None] | None = None

    def start_sweeping(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Keep every delivery clear of RabbitMQ's consumer_timeout: one handed out and held
        long is parked anew; one that waited long in the buffer goes back to its queue."""
        renew_after = self.broker.renew_after
        while True:
            await asyncio.sleep(min(renew_after / 4, 30.0))
            limit = time.monotonic() - renew_after
            channel = self.channel
            if channel is not None and any(e.arrived <= limit for e in self._buffer):
                stale = [e for e in self._buffer if e.arrived <= limit]
                self._buffer = [e for e in self._buffer if e.arrived > limit]
                heapq.heapify(self._buffer)
                for entry in stale:
                    await self._give_back(entry.channel, entry.message)
            for tag in self._held:
                # A hold whose channel closed is lost already: RabbitMQ put the message back.
                if tag.since <= limit and not tag.renewing and not tag.channel.is_closed:
                    self._tasks.spawn(self._renew(tag))

    async def _renew(self, tag: _Tag) -> None:
        """Hold ``tag``'s message as a fresh parked copy, then let go of what held it (a
        settle in flight: the channel must not close between the two)."""
        tag.renewing = True
        self._settling += 1
        try:
            await self._swap_for_parked_copy(tag)
        finally:
            tag.renewing = False
            self.settled()

    async def _swap_for_parked_copy(self, tag: _Tag) -> None:
        cutoffs = self.broker._cutoffs
        try:
            channel, copy = await self.broker.parking().take(tag.queue, tag.message)
        except _RENEWAL_ERRORS as exc:
            log.warning(
                "could not renew the hold of a message from %r (%s: %s): RabbitMQ may take it"
                " back at consumer_timeout; trying again shortly",
                tag.queue,
                type(exc).__name__,
                exc,
            )
            return
        if tag not in self._held or tag.channel.is_closed:
            # Settled meanwhile, or already put back with its channel: the copy must go.
            await cutoffs.settle(channel, channel.basic_ack(_number(copy)))
            return
        held_on, number = tag.channel, tag.number
        tag.channel, tag.number = channel, _number(copy)
        tag.since, tag.parked = time.monotonic(), True
        await cutoffs.settle(held_on, held_on.basic_ack(number))

    def wake(self) -> None:
        """Resume ``next()`` if it waits: a delivery arrived, a slot freed up, the channel
        closed or the broker is closing."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_if_ready(self) -> None:
        """Wake ``next()`` only when it can hand a delivery out: in a busy drain most
        arrivals find the window full and most settles find the buffer empty."""
        if self._buffer and self.window.room > 0:
            self.wake()

    async def next(self) -> Delivery | None:
        """The next delivery (None when the broker closed); reconnects as long as needed."""
        attempt = 0
        while not self.broker._closed:
            if self.channel is None or self.channel.is_closed:
                self._lost()
                try:
                    await self._start()
                except UNREACHABLE as exc:
                    await self.broker._outage(exc, attempt)
                    attempt += 1
                    continue
                attempt = 0
            if self._buffer and self.window.room > 0:
                return self._hand_out(heapq.heappop(self._buffer))
            await self._wait()
        return None

    async def _wait(self) -> None:
        """Until ``wake()``. One future that the news resolves directly: waiting on events
        beside the channel's closing took two more turns of the loop per delivery, and an
        idle worker's round trip pays every turn."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def _start(self) -> None:
        channel = await self.broker.channel()
        self.channel = channel
        channel.closing.add_done_callback(lambda _: self.wake())
        await channel.basic_qos(prefetch_count=self.prefetch)
        self._consumer_tags = []
        for queue in self.queues:
            await self.broker._declare(channel, queue)
            ok = await channel.basic_consume(queue, partial(self._arrive, queue, channel))
            self._consumer_tags.append(str(ok.consumer_tag))

    def _lost(self) -> None:
        """The channel closed under us: RabbitMQ put back everything it had given it."""
        self._buffer.clear()
        for tag in [tag for tag in self._held if tag.channel is self.channel]:
            self._forget(tag)
        self.channel = None

    async def _arrive(
        self, queue: str, channel: AbstractChannel, message: DeliveredMessage
    ) -> None:
        if channel is not self.channel:
            return  # from a channel since replaced or closing: RabbitMQ puts it back
        if self._stopped:
            # Sent before RabbitMQ took the consumer's cancel: it goes back at once.
            self._tasks.spawn(self._give_back(channel, message))
            return
        eta = _due(message)
        if eta is not None and eta > now():
            # Back from a delay queue before its time: on to the next hop.
            self._tasks.spawn(self._redelay(queue, channel, message, eta))
            return
        rank = (-_priority(message), next(self._arrivals))
        heapq.heappush(self._buffer, _Buffered(rank, queue, channel, message, time.monotonic()))
        self._wake_if_ready()

    async def _redelay(
        self, queue: str, channel: AbstractChannel, message: DeliveredMessage, eta: float
    ) -> None:
        tag = _Tag(self, channel, _number(message), message, queue)
        self._held.add(tag)
        self.settle(tag)
        try:
            await self.broker._move(tag, partial(self.broker._delay, queue, message, eta))
        finally:
            self.settled()

    def _hand_out(self, entry: _Buffered) -> Delivery:
        message = entry.message
        tag = _Tag(self, entry.channel, _number(message), message, entry.queue, entry.arrived)
        self._held.add(tag)
        self.window.tags.add(tag)
        envelope = to_envelope(message)
        priority = _priority(message)
        envelope.properties["priority"] = priority
        redelivered = bool(getattr(message.delivery, "redelivered", False))
        return Delivery(envelope, entry.queue, tag, redelivered, priority)

    def settle(self, tag: _Tag) -> bool:
        """Forget a delivery as its ack (reject, move) begins; False if it was settled (or
        lost with its channel) already. On True the caller writes it, then calls
        ``settled()``: until then the channel stays open, even once nothing is held."""
        if not self._forget(tag):
            return False
        self._settling += 1
        return True

    def settled(self) -> None:
        """A settle begun by ``settle()`` is written (or its channel is gone)."""
        self._settling -= 1
        if self._settling:
            return
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        self._close_if_done()

    def _forget(self, tag: _Tag) -> bool:
        if tag not in self._held:
            return False
        self._held.discard(tag)
        self.window.tags.discard(tag)
        self._wake_if_ready()
        return True

    async def _give_back(self, channel: AbstractChannel, message: DeliveredMessage) -> None:
        """Put back a delivery never handed out (a settle in flight like any other)."""
        self._settling += 1
        try:
            rejecting = channel.basic_reject(_number(message), requeue=True)
            await self.broker._cutoffs.settle(channel, rejecting)
        finally:
            self.settled()

    def _close_if_done(self) -> None:
        if self._stopped and not self._held and not self._settling:
            self._close_channel()

    def _close_channel(self) -> asyncio.Future[None]:
        """Close the channel (once): what it has not acknowledged goes back to its queue."""
        if self._closing is None:
            channel, self.channel = self.channel, None
            self._closing = asyncio.ensure_future(self._leave(channel))
        return self._closing

    async def _leave(self, channel: AbstractChannel | None) -> None:
        try:
            if channel is not None:
                await _close(channel)
        finally:
            self.broker._consumers.discard(self)

    def holding(self, queue: str) -> int:
        """Messages of ``queue`` this consumer has unacknowledged (handed out or buffered)."""
        held = sum(1 for tag in self._held if tag.queue == queue)
        return held + sum(1 for entry in self._buffer if entry.queue == queue)

    async def stop(self) -> None:
        """Stop consuming and give back what was not handed out. The channel closes once
        what was handed out is settled and written (closing it earlier would put those
        back too, tasks that ran included)."""
        if self._stopped:
            return
        self._stopped = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        channel = self.channel
        if channel is None or channel.is_closed:
            self._buffer.clear()  # put back with their channel
            self._close_if_done()
            return
        self._settling += 1  # the give-backs below
        try:
            with contextlib.suppress(*UNREACHABLE):
                for consumer_tag in self._consumer_tags:
                    await channel.basic_cancel(consumer_tag, timeout=_CLOSE_TIMEOUT)
            # Deliveries keep coming until RabbitMQ has the cancel (a deep backlog refills
            # each slot an ack frees): what came so far is given back here, later ones as
            # they arrive.
            buffered, self._buffer = self._buffer, []
            for entry in sorted(buffered):
                await self._give_back(entry.channel, entry.message)
        finally:
            self.settled()

    async def close(self) -> None:
        """The broker is closing: stop, wait for the settles in flight to be written, then
        close the channel; what is still held (a task cut off) goes back to its queue."""
        await self.stop()
        if self._settling:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        await self._close_channel()
        for task in list(self._tasks):
            task.cancel()  # re-delays and renewals: their channel is gone


def _number(message: DeliveredMessage) -> int:
    number = message.delivery_tag
    assert number is not None
    return number


def _priority(message: DeliveredMessage) -> int:
    return int(message.header.properties.priority or 0)


def _due(message: DeliveredMessage) -> float | None:
    value = (message.header.properties.headers or {}).get(ETA_HEADER)
    if value is None:
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


def _dead_letter(message: DeliveredMessage) -> DeadLetter:
    headers = message.header.properties.headers or {}
    died_at = headers.get(DIED_AT_HEADER)
    return DeadLetter(
        queue=str(headers.get(QUEUE_HEADER, "")),
        envelope=to_envelope(message),
        reason=str(headers.get(REASON_HEADER, "")),
        died_at=float(str(died_at)) if died_at is not None else time.time(),
    )


async def _close(channel: AbstractChannel) -> None:
    """Close a channel; RabbitMQ's answer is awaited ``_CLOSE_TIMEOUT`` at most (aiormq
    would wait up to a heartbeat interval, then for good)."""
    with contextlib.suppress(*_GONE_ERRORS):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await channel.close()
