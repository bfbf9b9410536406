"""The broker contract: what every transport implements, and nothing about tasks.

A broker moves opaque :class:`Envelope` objects between named queues. It never parses a
body: the worker and the client turn envelopes into tasks (``celeriac.protocol``).

Public methods validate once here and call the ``_``-prefixed primitives that a transport
implements. The contract suite in ``tests/contract`` runs against every implementation.

Priorities are celeriac's: 0 to 9, **higher runs first**, on every transport. A transport
whose native order differs (Celery on Redis runs lower numbers first) maps it.

Besides queues, a broker broadcasts: :meth:`Broker.broadcast` sends one envelope to every
subscriber (:meth:`Broker.subscribe`) of an exchange, as Celery's remote control
(``celery.pidbox``, fanout) and events (``celeryev``, topic) do. Nothing is stored for a
subscriber that is not there: a broadcast is fire-and-forget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any, Literal, get_args

from celeriac.errors import MessageTooLarge
from celeriac.protocol.envelope import Envelope
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

MIN_PRIORITY = 0
MAX_PRIORITY = 9

#: An exchange's type: ``fanout`` (every subscriber gets every message, as ``celery.pidbox``)
#: or ``topic`` (subscribers pick routing keys by pattern, as ``celeryev``).
ExchangeKind = Literal["fanout", "topic", "direct"]


@dataclass(slots=True)
class Delivery:
    """An envelope handed to a consumer, with what the broker needs to settle it.

    Every delivery must be settled exactly once: ``ack``, ``requeue``, ``defer`` or
    ``dead_letter``. A delivery never settled is redelivered when its holder dies.
    """

    envelope: Envelope
    queue: str
    tag: Any
    redelivered: bool = False
    priority: int = 0


@dataclass(slots=True)
class DeadLetter:
    """A message the worker could not run, kept with the reason so nothing is lost."""

    queue: str
    envelope: Envelope
    reason: str
    died_at: float


@dataclass(slots=True)
class PublishRequest:
    """One message to publish; ``eta`` (unix seconds) keeps it invisible until then."""

    queue: str
    envelope: Envelope
    priority: int = 0
    eta: float | None = None


class Broker(ABC):
    """Base class of every transport.

    Subclasses implement the ``_`` primitives; each one documents its duty below.
    Instances are bound to the event loop they were connected on.
    """

    #: Whether a message published with an ``eta`` stays invisible until then. A transport
    #: shared with Celery (Redis) pushes it at once instead, as Celery does: the ETA is in
    #: its headers, and the worker that receives it early ``defer``s it.
    hides_eta: bool = True
    #: Whether ``send_many`` hands :meth:`publish_many` a whole batch in one call rather
    #: than in chunks: a transport that stores one call in one transaction (SQLite) then
    #: queues a batch all or nothing.
    whole_batches: bool = False
    #: Whether :meth:`publish_once` keeps its promise here (the check and the publish in one
    #: atomic step); a transport that cannot (RabbitMQ) publishes every time.
    publishes_once: bool = False

    def __init__(
        self,
        url: str,
        *,
        max_message_size: int = 0,
        options: dict[str, Any] | None = None,
        queue_max_priority: int | None = None,
    ):
        self.url = url
        self.max_message_size = max_message_size
        self.options = dict(options or {})
        #: ``task_queue_max_priority``: for transports whose queues are declared with a
        #: priority range (AMQP's ``x-max-priority``); the others order priorities anyway.
        self.queue_max_priority = queue_max_priority
        self._subscriptions: set[Subscription] = set()

    # -- life cycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open connections; called once before any other method. Default: nothing to do."""

    def describe(self) -> str:
        """The broker, for the worker's ready line (a password hidden)."""
        return redacted(self.url)

    def priority_to_wire(self, priority: int) -> int:
        """celeriac's ``priority`` (0-9, higher first) as this broker's messages carry it,
        which is also how a Celery signature dict on it means its ``priority`` option (a
        canvas step's, published later by whichever worker runs the step before it). The
        same number on every broker but Redis, where kombu runs lower numbers first."""
        return priority

    def priority_from_wire(self, priority: int) -> int:
        """The inverse of :meth:`priority_to_wire`."""
        return priority

    async def ping(self) -> None:
        """One round trip: raise :class:`~celeriac.errors.BrokerUnreachable` if the broker
        does not answer. A worker says it is ready only once this returns. Default: an
        embedded broker is always there."""

    async def close(self) -> None:
        """Release connections. Unsettled deliveries go back to their queue."""

    # -- producing -------------------------------------------------------------------------

    async def publish(
        self, queue: str, envelope: Envelope, *, priority: int = 0, eta: float | None = None
    ) -> None:
        """Store one message durably; returns once the broker has it."""
        await self.publish_many([PublishRequest(queue, envelope, priority, eta)])

    def publish_now(
        self, queue: str, envelope: Envelope, *, priority: int = 0, eta: float | None = None
    ) -> asyncio.Future[None] | None:
        """Start :meth:`publish` at once, without a task, where the transport can (a
        connection is open, the queue known); the future ends as :meth:`publish` would.
        None: it cannot here, use :meth:`publish`. Bad arguments raise at once either way."""
        self._check(PublishRequest(queue, envelope, priority, eta))
        return None

    async def publish_many(self, requests: Sequence[PublishRequest]) -> None:
        """Store many messages in as few round trips as the transport allows."""
        for request in requests:
            self._check(request)
        await self._publish(requests)

    async def publish_once(
        self,
        queue: str,
        envelope: Envelope,
        *,
        key: str,
        sequence: int,
        priority: int = 0,
        eta: float | None = None,
    ) -> bool:
        """Publish unless a message was published under ``key`` with a ``sequence`` at
        least this one, deciding and publishing in one atomic step; True when it published.
        The scheduler publishes each run under its entry's key with the run's time, so a run
        sent again after a crash that left it in doubt is not queued twice (see
        celeriac.beat.store). Keys are kept until the broker is emptied."""
        request = PublishRequest(queue, envelope, priority, eta)
        self._check(request)
        return await self._publish_once(request, key, sequence)

    async def _publish_once(self, request: PublishRequest, key: str, sequence: int) -> bool:
        """Atomically: unless ``key``'s sequence is ``sequence`` or more, set it to
        ``sequence`` and publish. A transport that cannot (``publishes_once`` False)
        publishes every time."""
        await self._publish([request])
        return True

    def _check(self, request: PublishRequest) -> None:
        if not MIN_PRIORITY <= request.priority <= MAX_PRIORITY:
            raise ValueError(
                f"priority {request.priority} is out of range: use {MIN_PRIORITY}..{MAX_PRIORITY}"
                " (higher runs first)"
            )
        size = len(request.envelope.body)
        if self.max_message_size and size > self.max_message_size:
            raise MessageTooLarge(
                f"message body is {size} bytes, over broker_max_message_size="
                f"{self.max_message_size}: pass large data by reference (a path or URL) instead"
            )

    @abstractmethod
    async def _publish(self, requests: Sequence[PublishRequest]) -> None:
        """Durably append each request to its queue (visible from ``eta`` if given and
        ``hides_eta``)."""

    # -- consuming -------------------------------------------------------------------------

    @abstractmethod
    def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queues``, highest priority first, then oldest first.

        Between messages of equal priority in different queues, the order is the
        transport's (Redis takes the queues round robin, as kombu does).

        At most ``prefetch`` deliveries are outstanding (yielded, not yet settled) at once.
        New messages reach an idle consumer promptly (no long fixed poll). Closing the
        iterator (``aclose``) stops consuming; deliveries not yet yielded go back.
        """

    # Settling: each delivery is settled once, by one of the four methods below. Settling a
    # delivery this broker no longer holds (settled already, or given back when it closed)
    # does nothing, so a late or repeated call can never remove or duplicate a message.

    @abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The message was handled: remove it for good."""

    @abstractmethod
    async def requeue(self, delivery: Delivery) -> None:
        """Put the message back, marked redelivered, to be consumed again soon."""

    @abstractmethod
    async def defer(self, delivery: Delivery, eta: float) -> None:
        """Put the message back, invisible until ``eta`` (unix seconds)."""

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the dead letters with ``reason``; it is not consumed again."""

    # -- administration --------------------------------------------------------------------

    @abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete every waiting message of ``queue``; return how many were deleted."""

    @abstractmethod
    async def queue_sizes(self, queues: Sequence[str] = ()) -> dict[str, int]:
        """Messages waiting (or held) per known queue, and per queue of ``queues`` (a
        transport that cannot list its queues, such as RabbitMQ, knows only those it used
        and those named here); queues without messages are left out."""

    @abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    @abstractmethod
    async def dead_letter_count(self) -> int:
        """How many dead letters are kept."""

    # -- broadcasting ----------------------------------------------------------------------

    async def broadcast(
        self,
        exchange: str,
        envelope: Envelope,
        routing_key: str = "",
        *,
        kind: ExchangeKind = "fanout",
    ) -> None:
        """Send ``envelope`` to every subscriber of ``exchange`` subscribed right now.

        Fire-and-forget, as Celery's fanout: nothing is stored for later subscribers, and
        returning means the broker took the message, not that anyone received it. ``kind``
        is the exchange's type; on RabbitMQ it must be the type the exchange was declared
        with (Celery's: ``fanout`` for ``celery.pidbox``, ``topic`` for ``celeryev``,
        ``direct`` for ``reply.celery.pidbox``). A ``direct`` message goes to the
        subscriptions whose routing key is the message's, on Redis and RabbitMQ through the
        queue each such subscription binds, as kombu routes Celery's remote-control replies.
        """
        check_exchange(exchange, kind)
        self._check(PublishRequest(exchange, envelope))
        await self._broadcast(exchange, envelope, routing_key, kind)

    def subscribe(
        self, exchange: str, *, routing_key: str = "#", kind: ExchangeKind = "fanout"
    ) -> Subscription:
        """The envelopes broadcast on ``exchange`` from the moment the subscription is open.

        ``async with broker.subscribe("celeryev", routing_key="worker.#", kind="topic") as
        messages: async for envelope in messages: ...``. Entering returns once the server
        has the subscription: a broadcast made after that is never missed. On a ``topic``
        exchange only routing keys matching ``routing_key`` come (AMQP's patterns: ``*``
        one word, ``#`` zero or more); on a ``direct`` one only ``routing_key`` itself (a
        client's reply inbox: Redis and RabbitMQ give it a queue of its own, named
        ``<routing_key>.<exchange>`` as kombu names a reply queue, deleted on close); a
        ``fanout`` exchange ignores routing keys. Closing the broker closes its
        subscriptions.
        """
        check_exchange(exchange, kind)
        subscription = self._subscribe(exchange, routing_key, kind)
        self._subscriptions.add(subscription)
        subscription.on_close = self._subscriptions.discard
        return subscription

    async def close_subscriptions(self) -> None:
        """Close every open subscription (a transport's ``close`` calls this first)."""
        for subscription in list(self._subscriptions):
            await subscription.close()

    @abstractmethod
    async def _broadcast(
        self, exchange: str, envelope: Envelope, routing_key: str, kind: ExchangeKind
    ) -> None:
        """Hand the envelope to every subscription of ``exchange`` open at the server now."""

    @abstractmethod
    def _subscribe(self, exchange: str, routing_key: str, kind: ExchangeKind) -> Subscription:
        """A subscription, not yet open: its ``_open`` subscribes at the server."""


class Subscription(ABC):
    """Envelopes broadcast on one exchange; an async iterator and an async context manager.

    A transport implements ``_open`` (subscribe at the server; return only once it is in
    place) and ``_close``, and hands each message it receives to :meth:`deliver` on the
    subscription's event loop; this class filters routing keys and buffers. Iterating ends
    when the subscription is closed, and raises the error a transport gave :meth:`fail`
    (the connection was lost for good).
    """

    #: Messages received and not yet read, at most: beyond, the oldest are dropped (logged
    #: once), so a reader that stopped reading cannot fill the memory.
    max_pending = 10_000

    def __init__(self, exchange: str, routing_key: str, kind: ExchangeKind) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.kind = kind
        #: Messages dropped because :attr:`max_pending` were waiting.
        self.dropped = 0
        self.on_close: Callable[[Subscription], None] | None = None
        self._wanted = _matcher(routing_key, kind)
        self._inbox: deque[Envelope] = deque()
        self._arrival = asyncio.Event()
        self._error: BaseException | None = None
        self._opened = False
        self._closed = False

    async def open(self) -> Subscription:
        """Subscribe at the server; returns once broadcasts reach this subscription."""
        if self._opened:
            raise RuntimeError(f"the subscription to {self.exchange!r} was opened already")
        self._opened = True
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Unsubscribe; what was received and not read is dropped. Closing twice is fine."""
        if self._closed:
            return
        self._closed = True
        self._arrival.set()
        if self.on_close is not None:
            self.on_close(self)
        await self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._arrival.clear()
            await self._arrival.wait()

    def deliver(self, envelope: Envelope, routing_key: str) -> None:
        """A message broadcast with ``routing_key`` came (transport side, on this loop)."""
        if self._closed or (self._wanted is not None and not self._wanted(routing_key)):
            return
        if len(self._inbox) >= self.max_pending:
            self._inbox.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "subscription to %r: %d messages wait unread; dropping the oldest",
                    self.exchange,
                    self.max_pending,
                )
        self._inbox.append(envelope)
        self._arrival.set()

    def fail(self, error: BaseException) -> None:
        """End the iteration with ``error`` once what was received has been read."""
        if self._error is None and not self._closed:
            self._error = error
            self._arrival.set()

    @abstractmethod
    async def _open(self) -> None:
        """Subscribe at the server; return once a broadcast made now would reach it."""

    @abstractmethod
    async def _close(self) -> None:
        """Unsubscribe and release what ``_open`` took (also after a failed ``_open``)."""


def check_exchange(exchange: str, kind: str) -> None:
    """The argument checks of ``broadcast`` and ``subscribe``."""
    if not isinstance(exchange, str) or not exchange:
        raise ValueError(f"broadcasts need an exchange name, not {exchange!r}")
    if kind not in get_args(ExchangeKind):
        raise ValueError(f"exchange kind {kind!r} is not one of {get_args(ExchangeKind)}")


def _matcher(routing_key: str, kind: ExchangeKind) -> Callable[[str], bool] | None:
    """Which routing keys a subscription takes: all (fanout), those matching its pattern
    (topic), or exactly its own (direct)."""
    if kind == "topic":
        return topic_matcher(routing_key)
    if kind == "direct":
        return routing_key.__eq__
    return None


def topic_matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a routing key matches ``pattern``, as AMQP's topic exchanges decide: words
    are separated by dots, ``*`` is exactly one word, ``#`` zero or more; the empty key
    has no words (RabbitMQ's reading)."""
    if pattern == "#":
        return _always
    words = tuple(pattern.split(".")) if pattern else ()

    def matches(routing_key: str) -> bool:
        return _topic_match(words, tuple(routing_key.split(".")) if routing_key else ())

    return matches


def _always(routing_key: str) -> bool:
    return True


@lru_cache(maxsize=4096)
def _topic_match(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic_match(rest, key[start:]) for start in range(len(key) + 1))
    return bool(key) and head in ("*", key[0]) and _topic_match(rest, key[1:])


class PrefetchWindow:
    """One consumer's prefetch window: the deliveries it was given and has not settled."""

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.tags: set[Hashable] = set()
        self.signal = asyncio.Event()  # set when a slot frees up (or the broker closes)

    @property
    def room(self) -> int:
        return self.prefetch - len(self.tags)


class PrefetchWindows:
    """The open windows of one broker's consumers, and which window each delivery is in."""

    def __init__(self) -> None:
        self.open: set[PrefetchWindow] = set()
        self._by_tag: dict[Hashable, PrefetchWindow] = {}

    def track(self, window: PrefetchWindow, tags: Iterable[Hashable]) -> None:
        """The deliveries of these tags were given to ``window``'s consumer."""
        for tag in tags:
            window.tags.add(tag)
            self._by_tag[tag] = window

    def settle(self, tag: Hashable) -> bool:
        """Free the slot of the delivery ``tag``; False if no window holds it."""
        window = self._by_tag.pop(tag, None)
        if window is None:
            return False
        window.tags.discard(tag)
        window.signal.set()
        return True

    def wake_all(self) -> None:
        """Wake every consumer (the broker is closing)."""
        for window in self.open:
            window.signal.set()


def check_consume(queues: Sequence[str], prefetch: int) -> None:
    """The argument checks every transport's ``consume`` makes."""
    if isinstance(queues, str):
        raise TypeError("consume() takes a sequence of queue names, not one string")
    if not queues:
        raise ValueError("consume() needs at least one queue")
    if prefetch < 1:
        raise ValueError(f"prefetch must be at least 1, not {prefetch}")


def now() -> float:
    """Wall-clock unix time: ETAs cross processes, so a monotonic clock would not do."""
    return time.time()


async def wait_for_signal(signal: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``signal`` is set or ``timeout`` passes; True when it was set.

    Callers clear the signal *before* they look at the shared state, so a wake-up that
    arrives while they look is kept for this wait instead of being lost.
    """
    if signal.is_set():
        return True
    if timeout is not None and timeout <= 0:
        return False
    try:
        async with asyncio.timeout(timeout):
            await signal.wait()
    except TimeoutError:
        return False
    return True


#: What one claim returns: the deliveries taken, and when the next hidden message becomes
#: visible (unix seconds; None: none is hidden).
Claimed = tuple[list[Delivery], float | None]


async def claim_loop(
    windows: PrefetchWindows,
    window: PrefetchWindow,
    buffered: deque[Delivery],
    claim: Callable[[int], Awaitable[Claimed]],
    idle_timeout: Callable[[float | None], float | None],
    closed: Callable[[], bool],
) -> AsyncGenerator[Delivery, None]:
    """The consume loop of a transport that claims its messages (memory, SQLite): hand out
    what was claimed, claim up to the window's room, and otherwise sleep until a wake-up sets
    the window's signal or ``idle_timeout(next visible time)`` passes.

    ``buffered`` is the caller's: whatever is left in it when the loop ends was claimed and
    not handed out, and the caller gives it back.
    """
    while not closed():
        if buffered:
            yield buffered.popleft()
            continue
        window.signal.clear()
        timeout = None
        if window.room > 0:
            claimed, next_eta = await claim(window.room)
            if not claimed and closed():
                return  # closed while claiming: no wait before the end
            windows.track(window, (delivery.tag for delivery in claimed))
            buffered.extend(claimed)
            if claimed:
                continue
            timeout = idle_timeout(next_eta)
        await wait_for_signal(window.signal, timeout)
