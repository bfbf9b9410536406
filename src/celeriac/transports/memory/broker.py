"""``memory://``: the reference broker, inside one process, for tests.

Every instance in the process with the same URL (``memory://`` and ``memory://x`` are two
namespaces) shares one set of queues, because a client and a worker in one process use
different instances, possibly on different event loops in different threads (the sync API
runs its own loop in a private thread). A lock guards the queues and each waiting consumer
is woken on its own loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import (
    Broker,
    Claimed,
    DeadLetter,
    Delivery,
    ExchangeKind,
    PrefetchWindow,
    PrefetchWindows,
    PublishRequest,
    Subscription,
    check_consume,
    claim_loop,
    now,
)
from celeriac.transports.options import checked_options

_Subscriber = tuple[asyncio.AbstractEventLoop, Callable[[], None]]


@dataclass(slots=True)
class _Message:
    order: int  # FIFO position; kept on requeue so a requeued message is not sent to the back
    queue: str
    envelope: Envelope
    priority: int
    visible_at: float
    redelivered: bool = False


@dataclass(slots=True)
class _Queue:
    ready: list[tuple[int, int, _Message]] = field(default_factory=list)  # (-priority, order)
    delayed: list[tuple[float, int, _Message]] = field(default_factory=list)  # (visible_at, order)

    def push(self, message: _Message, at: float) -> None:
        if message.visible_at > at:
            heapq.heappush(self.delayed, (message.visible_at, message.order, message))
        else:
            heapq.heappush(self.ready, (-message.priority, message.order, message))

    def promote(self, at: float) -> None:
        while self.delayed and self.delayed[0][0] <= at:
            message = heapq.heappop(self.delayed)[2]
            heapq.heappush(self.ready, (-message.priority, message.order, message))

    def __len__(self) -> int:
        return len(self.ready) + len(self.delayed)


class _Transport:
    """The queues of one namespace; every method takes the lock itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, _Queue] = {}
        self.held: dict[int, tuple[_Message, int]] = {}  # tag -> (message, owner)
        self.dead: list[DeadLetter] = []
        self.subscribers: list[_Subscriber] = []
        #: exchange -> the subscriptions open on it, each with its loop
        self.listeners: dict[str, list[tuple[asyncio.AbstractEventLoop, Subscription]]] = {}
        self._orders = itertools.count()
        self._tags = itertools.count(1)
        #: publish_once's keys -> the newest sequence put under each
        self.once: dict[str, int] = {}

    def put_once(self, request: PublishRequest, key: str, sequence: int) -> bool:
        """Put ``request`` unless ``key`` was put with ``sequence`` or a later one."""
        with self.lock:
            if key in self.once and self.once[key] >= sequence:
                return False
            self.once[key] = sequence
        self.put([request])
        return True

    def put(self, requests: Sequence[PublishRequest]) -> None:
        at = now()
        with self.lock:
            for r in requests:
                visible_at = r.eta if r.eta is not None else 0.0
                message = _Message(next(self._orders), r.queue, r.envelope, r.priority, visible_at)
                self._queue(r.queue).push(message, at)
        self.wake()

    def _queue(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue()
        return queue

    def claim(
        self, names: Sequence[str], count: int, owner: int
    ) -> tuple[list[Delivery], float | None]:
        """Up to ``count`` deliveries, best first; else the earliest future visibility."""
        at = now()
        taken: list[Delivery] = []
        with self.lock:
            queues = [q for q in (self.queues.get(n) for n in names) if q is not None]
            for queue in queues:
                queue.promote(at)
            while len(taken) < count:
                candidates = [q for q in queues if q.ready]
                if not candidates:
                    break
                best = min(candidates, key=lambda q: q.ready[0][:2])
                taken.append(self._hold(heapq.heappop(best.ready)[2], owner))
            if taken:
                return taken, None
            etas = [q.delayed[0][0] for q in queues if q.delayed]
            return [], min(etas, default=None)

    def _hold(self, message: _Message, owner: int) -> Delivery:
        tag = next(self._tags)
        self.held[tag] = (message, owner)
        return Delivery(message.envelope, message.queue, tag, message.redelivered, message.priority)

    def settle(self, tag: Any, owner: int) -> _Message | None:
        """Take back a held message; None when ``owner`` does not hold ``tag``."""
        with self.lock:
            entry = self.held.get(tag)
            if entry is None or entry[1] != owner:
                return None
            del self.held[tag]
            return entry[0]

    def put_back(self, messages: Iterable[_Message], *, redelivered: bool) -> None:
        at = now()
        with self.lock:
            for message in messages:
                message.redelivered = message.redelivered or redelivered
                self._queue(message.queue).push(message, at)
        self.wake()

    def release_owner(self, owner: int) -> None:
        with self.lock:
            tags = [tag for tag, (_, holder) in self.held.items() if holder == owner]
            messages = [self.held.pop(tag)[0] for tag in tags]
        if messages:
            self.put_back(messages, redelivered=True)

    def subscribe(self, subscriber: _Subscriber) -> Callable[[], None]:
        with self.lock:
            self.subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self.lock:
                if subscriber in self.subscribers:
                    self.subscribers.remove(subscriber)

        return unsubscribe

    def wake(self) -> None:
        with self.lock:
            subscribers = list(self.subscribers)
        for loop, callback in subscribers:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # that loop is closed: its consumer is gone
                with self.lock:
                    if (loop, callback) in self.subscribers:
                        self.subscribers.remove((loop, callback))

    def purge(self, name: str) -> int:
        with self.lock:
            queue = self.queues.pop(name, None)
            return 0 if queue is None else len(queue)

    def sizes(self) -> dict[str, int]:
        with self.lock:
            sizes = {name: len(q) for name, q in self.queues.items() if len(q)}
            for message, _ in self.held.values():
                sizes[message.queue] = sizes.get(message.queue, 0) + 1
            return sizes


_REGISTRY_LOCK = threading.Lock()
_OWNERS = itertools.count(1)
_TRANSPORTS: dict[str, _Transport] = {}


def _transport_for(url: str) -> _Transport:
    parts = urlsplit(url)
    key = parts.netloc + parts.path
    with _REGISTRY_LOCK:
        transport = _TRANSPORTS.get(key)
        if transport is None:
            transport = _TRANSPORTS[key] = _Transport()
        return transport


def reset_memory_transports() -> None:
    """Forget every ``memory://`` queue and result in this process, so a test starts empty."""
    from celeriac.transports.memory import backend as results  # lazy: only this reset needs it

    with _REGISTRY_LOCK:
        _TRANSPORTS.clear()
    results.clear_results()


class MemoryBroker(Broker):
    """Queues in this process's memory. Options: none (any is a ConfigurationError)."""

    publishes_once = True

    def __init__(self, url: str, **settings: Any) -> None:  # settings: see Broker
        super().__init__(url, **settings)
        checked_options(self.options, {}, "broker_transport_options", "memory://")
        self._transport = _transport_for(url)
        self._owner = next(_OWNERS)
        self._windows = PrefetchWindows()
        self._closed = False

    async def close(self) -> None:
        await self.close_subscriptions()
        self._closed = True
        self._windows.wake_all()  # each consume() loop sees _closed and ends
        self._windows = PrefetchWindows()
        self._transport.release_owner(self._owner)

    async def _publish(self, requests: Sequence[PublishRequest]) -> None:
        self._transport.put(requests)

    async def _publish_once(self, request: PublishRequest, key: str, sequence: int) -> bool:
        return self._transport.put_once(request, key, sequence)

    async def consume(
        self, queues: Sequence[str], *, prefetch: int
    ) -> AsyncGenerator[Delivery, None]:
        check_consume(queues, prefetch)
        window = PrefetchWindow(prefetch)
        unsubscribe = self._transport.subscribe((asyncio.get_running_loop(), window.signal.set))
        self._windows.open.add(window)
        buffered: deque[Delivery] = deque()

        async def claim(room: int) -> Claimed:
            return self._transport.claim(queues, room, self._owner)

        def idle_timeout(next_eta: float | None) -> float | None:
            return None if next_eta is None else max(next_eta - now(), 0.0) + 0.001

        loop = claim_loop(self._windows, window, buffered, claim, idle_timeout, self._is_closed)
        try:
            async for delivery in loop:
                yield delivery
        finally:
            await loop.aclose()
            unsubscribe()
            self._windows.open.discard(window)
            self._return_unyielded(buffered)

    def _is_closed(self) -> bool:
        return self._closed

    def _return_unyielded(self, buffered: Iterable[Delivery]) -> None:
        messages = [m for m in map(self._settle, buffered) if m is not None]
        if messages:
            self._transport.put_back(messages, redelivered=False)

    def _settle(self, delivery: Delivery) -> _Message | None:
        self._windows.settle(delivery.tag)
        return self._transport.settle(delivery.tag, self._owner)

    async def ack(self, delivery: Delivery) -> None:
        self._settle(delivery)

    async def requeue(self, delivery: Delivery) -> None:
        message = self._settle(delivery)
        if message is not None:
            self._transport.put_back([message], redelivered=True)

    async def defer(self, delivery: Delivery, eta: float) -> None:
        message = self._settle(delivery)
        if message is not None:
            message.visible_at = eta
            self._transport.put_back([message], redelivered=False)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        message = self._settle(delivery)
        if message is not None:
            letter = DeadLetter(message.queue, message.envelope, reason, now())
            with self._transport.lock:
                self._transport.dead.append(letter)

    async def purge(self, queue: str) -> int:
        return self._transport.purge(queue)

    async def queue_sizes(self, queues: Sequence[str] = ()) -> dict[str, int]:
        return self._transport.sizes()

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._transport.lock:
            return list(reversed(self._transport.dead[-limit:])) if limit > 0 else []

    async def dead_letter_count(self) -> int:
        with self._transport.lock:
            return len(self._transport.dead)

    async def _broadcast(
        self, exchange: str, envelope: Envelope, routing_key: str, kind: ExchangeKind
    ) -> None:
        with self._transport.lock:
            listeners = list(self._transport.listeners.get(exchange, ()))
        for loop, subscription in listeners:
            copy = Envelope(
                envelope.body,
                envelope.content_type,
                envelope.content_encoding,
                dict(envelope.headers),
                dict(envelope.properties),
            )
            # A closed loop raises RuntimeError: its subscription is gone with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(subscription.deliver, copy, routing_key)

    def _subscribe(self, exchange: str, routing_key: str, kind: ExchangeKind) -> Subscription:
        return _MemorySubscription(self._transport, exchange, routing_key, kind)


class _MemorySubscription(Subscription):
    """In-process fan-out: the transport calls :meth:`deliver` on this subscription's loop."""

    def __init__(
        self, transport: _Transport, exchange: str, routing_key: str, kind: ExchangeKind
    ) -> None:
        super().__init__(exchange, routing_key, kind)
        self._transport = transport
        self._entry: tuple[asyncio.AbstractEventLoop, Subscription] | None = None

    async def _open(self) -> None:
        self._entry = (asyncio.get_running_loop(), self)
        with self._transport.lock:
            self._transport.listeners.setdefault(self.exchange, []).append(self._entry)

    async def _close(self) -> None:
        if self._entry is None:
            return
        with self._transport.lock:
            listeners = self._transport.listeners.get(self.exchange, [])
            if self._entry in listeners:
                listeners.remove(self._entry)
            if not listeners:
                self._transport.listeners.pop(self.exchange, None)
        self._entry = None
