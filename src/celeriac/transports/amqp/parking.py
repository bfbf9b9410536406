"""Long holds on RabbitMQ: a delivery kept past ``consumer_timeout`` is moved, not lost.

RabbitMQ closes a channel that keeps a delivery unacknowledged longer than its
``consumer_timeout`` (30 min by default) and puts back everything the channel held, so a
long ``acks_late`` task would run again on another worker while it still runs here, and take
its neighbours' deliveries down with it. Servers from 3.11.15 accept a longer timeout per
consumer, older ones only in their own configuration; this works on both.

Before the timeout, the holder publishes a copy of the message to a *parking queue* of its
own and consumes it there, then acknowledges what it held before: the message is never out
of a queue or a holder's hands, and each delivery is renewed long before RabbitMQ's check.
The parking queue dead-letters to the message's queue, and its TTL is short: a copy that is
put back (its holder died, or the connection dropped) expires at once and returns to its
queue, where any worker runs it again, as the original would have been. Its ``x-expires``
deletes it once no one has used it for a while.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage

from celeriac.transports.amqp import connection as _amqp

PARKED_HEADER = "x-celeriac-parked"
#: How long a parked copy that was put back waits before going home (RabbitMQ keeps the
#: TTL a message was first queued with, so a copy put back later expires at once).
_COPY_TTL_MS = 1000
#: Unused for this long, a parking queue is deleted (its copies have long gone home).
_UNUSED_EXPIRES_MS = 10 * 60 * 1000
_ARRIVAL_TIMEOUT = 30.0


class Parking:
    """One broker's parking queues (one per task queue it parks from), consumed on a channel
    of their own with no prefetch limit."""

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[AbstractChannel]],
        publish_copy: Callable[[str, DeliveredMessage, dict[str, Any]], Awaitable[None]],
        prefix: str,
    ) -> None:
        self._open_channel = open_channel
        self._publish_copy = publish_copy
        self._prefix = f"{prefix}.{uuid.uuid4().hex[:12]}"
        self._channel: AbstractChannel | None = None
        self._consumed: set[str] = set()  # parking queues consumed on the current channel
        self._arrivals: dict[str, asyncio.Future[DeliveredMessage]] = {}
        self._abandoned: set[str] = set()  # copies whose taker gave up: the original holds
        self._lock = asyncio.Lock()
        #: Every parking queue declared, for tests that clean up after themselves.
        self.declared: set[str] = set()

    def queue_for(self, queue: str) -> str:
        return f"{self._prefix}.{queue}"

    async def take(
        self, queue: str, message: DeliveredMessage
    ) -> tuple[AbstractChannel, DeliveredMessage]:
        """A copy of ``message`` (from ``queue``), parked and delivered to this broker: its
        channel and the delivery, unacknowledged. The caller then lets go of what it held."""
        channel = await self._consuming(queue)
        token = uuid.uuid4().hex
        arrival: asyncio.Future[DeliveredMessage] = asyncio.get_running_loop().create_future()
        self._arrivals[token] = arrival
        try:
            await self._publish_copy(self.queue_for(queue), message, {PARKED_HEADER: token})
            async with asyncio.timeout(_ARRIVAL_TIMEOUT):
                copy = await asyncio.shield(arrival)
        except BaseException:
            self._abandoned.add(token)  # should it still come, the original is what counts
            raise
        finally:
            self._arrivals.pop(token, None)
        return channel, copy

    async def _consuming(self, queue: str) -> AbstractChannel:
        async with self._lock:
            channel = self._channel
            if channel is None or channel.is_closed:
                channel = self._channel = await self._open_channel()
                self._consumed = set()
            name = self.queue_for(queue)
            if name not in self._consumed:
                arguments = {
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                    "x-message-ttl": _COPY_TTL_MS,
                    "x-expires": _UNUSED_EXPIRES_MS,
                }
                await _amqp.declare_queue(channel, name, arguments)
                self.declared.add(name)
                await channel.basic_consume(name, self._arrive)
                self._consumed.add(name)
            return channel

    async def _arrive(self, message: DeliveredMessage) -> None:
        token = str((message.header.properties.headers or {}).get(PARKED_HEADER, ""))
        arrival = self._arrivals.get(token)
        if arrival is not None and not arrival.done():
            arrival.set_result(message)
            return
        number = message.delivery_tag
        if number is None or message.channel is None:
            return
        if token in self._abandoned:  # its taker kept the original: the copy is dropped
            self._abandoned.discard(token)
            await message.channel.basic_ack(number)
        else:  # a copy whose holder is gone: home it goes, through the dead-letter route
            await message.channel.basic_reject(number, requeue=False)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()
