"""The receiver: one subscription to ``event_exchange``, read as Celery's receiver reads it."""

from __future__ import annotations

import logging
import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celeriac.errors import ProtocolError
from celeriac.protocol import events
from celeriac.transports.broker import Subscription

if TYPE_CHECKING:
    from celeriac.app import Celery

logger = logging.getLogger("celeriac.events")

#: What Celery's receiver gives a ``task-sent`` event for a clock: clients never move
#: their clocks past others', so theirs means nothing; the receiver's, one before.
CLIENT_CLOCK_SKEW = -1


class EventReceiver:
    """The events broadcast on the app's ``event_exchange`` from the moment it is entered.

    ``async with EventReceiver(app) as receiver: async for event in receiver: ...``.
    ``routing_key`` picks the events by their routing key (``#``: all, as Flower and
    ``celery events``; ``worker.#``: workers' own). ``wakeup`` casts Celery's ``heartbeat``
    control command once subscribed, so workers show up at once rather than at their next
    heartbeat (Celery's ``capture(wakeup=True)``).

    On RabbitMQ the subscription's queue is exclusive to this receiver and deleted with
    it; ``event_queue_ttl`` and ``event_queue_expires`` (Celery's ``x-message-ttl`` and
    ``x-expires`` on that queue) are kept in :attr:`queue_ttl` / :attr:`queue_expires` for
    the transport, which does not set queue arguments on topic subscriptions yet.
    """

    def __init__(self, app: Celery, routing_key: str = "#", *, wakeup: bool = False) -> None:
        conf = app.conf
        self.app = app
        self.exchange: str = conf.event_exchange
        self.routing_key = routing_key
        self.wakeup = wakeup
        self.queue_ttl: float = conf.event_queue_ttl
        self.queue_expires: float = conf.event_queue_expires
        self._subscription: Subscription | None = None
        self._ready: deque[dict[str, Any]] = deque()
        self._local_offset = events.utcoffset()

    async def __aenter__(self) -> EventReceiver:
        conn = await self.app.connection()
        subscription = conn.broker.subscribe(
            self.exchange, routing_key=self.routing_key, kind="topic"
        )
        self._subscription = await subscription.open()
        if self.wakeup:
            await self.app.control.broadcast("heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    def __aiter__(self) -> EventReceiver:
        return self

    async def __anext__(self) -> dict[str, Any]:
        subscription = self._subscription
        if subscription is None:
            raise RuntimeError("enter the receiver (async with) before reading it")
        while not self._ready:
            envelope = await anext(subscription)
            try:
                received = events.parse(envelope)
            except ProtocolError as exc:
                logger.warning("dropped an event that cannot be read: %s", exc)
                continue
            self._ready.extend(self.localize(event) for event in received)
        return self._ready.popleft()

    def localize(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` as Celery's receiver hands it on: the clock adjusted, the timestamp
        in this host's offset, ``local_received`` added."""
        clock = self.app.clock
        if event["type"] == "task-sent":
            event["clock"] = (clock.value or 1) + CLIENT_CLOCK_SKEW
            clock.adjust(event["clock"])
        elif isinstance(event.get("clock"), int):
            clock.adjust(event["clock"])
        else:
            event["clock"] = clock.forward()
        offset, timestamp = event.get("utcoffset"), event.get("timestamp")
        if isinstance(offset, int | float) and isinstance(timestamp, int | float):
            event["timestamp"] = timestamp - (offset - self._local_offset) * 3600
        event["local_received"] = time.time()
        return event
