"""Broadcasts on RabbitMQ: real exchanges, declared as Celery declares them.

A ``fanout`` exchange is declared as kombu's Mailbox declares ``celery.pidbox`` (not
durable), a ``direct`` one as it declares ``reply.celery.pidbox`` (not durable), a ``topic``
one as Celery's events declare ``celeryev`` (durable); none is auto-deleted. A Celery peer on
the same server declares the same, so both share them. A subscriber binds a server-named
queue of its own (exclusive, auto-deleted with its channel) with its routing key pattern (the
empty key on a fanout exchange) and consumes it without acks: what is not there when a
message is routed never sees it.

A ``direct`` subscriber is a reply inbox, declared as kombu declares a Celery client's reply
queue: named ``<routing key>.<exchange>``, exclusive, auto-deleted, not durable, with kombu's
``x-expires`` and ``x-message-ttl``, bound with the routing key itself. It is deleted on
close, so a message sent to its key afterwards is routed nowhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, DeliveredMessage

from celeriac.errors import BrokerUnreachable
from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp.connection import UNREACHABLE, declare_error
from celeriac.transports.broker import ExchangeKind, Subscription

#: Durability by kind: Celery's pidbox exchange is transient, its events exchange durable.
DURABLE: dict[str, bool] = {"fanout": False, "topic": True, "direct": False}
#: A reply queue's arguments, kombu's defaults (Celery's ``control_queue_expires`` 10 s and
#: ``control_queue_ttl`` 300 s).
REPLY_QUEUE_ARGUMENTS: dict[str, int] = {"x-expires": 10_000, "x-message-ttl": 300_000}


async def declare_exchange(channel: AbstractChannel, name: str, kind: ExchangeKind) -> None:
    """Declare ``name`` as Celery declares an exchange of this kind."""
    try:
        await channel.exchange_declare(
            name, exchange_type=kind, durable=DURABLE[kind], auto_delete=False
        )
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise declare_error(exc) from None


def reply_queue(exchange: str, routing_key: str) -> str:
    """A ``direct`` subscription's queue, named as kombu names a reply queue
    (``<oid>.reply.celery.pidbox``)."""
    return f"{routing_key}.{exchange}"


class AmqpSubscription(Subscription):
    """A channel of its own consuming an exclusive queue bound to the exchange."""

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[AbstractChannel]],
        to_envelope: Callable[[DeliveredMessage], Envelope],
        describe: str,
        exchange: str,
        routing_key: str,
        kind: ExchangeKind,
    ) -> None:
        super().__init__(exchange, routing_key, kind)
        self._open_channel = open_channel
        self._to_envelope = to_envelope
        self._describe = describe
        self._channel: AbstractChannel | None = None
        self._queue: str | None = None
        self._consumer_tag: str | None = None

    async def _open(self) -> None:
        channel = self._channel = await self._open_channel()
        await declare_exchange(channel, self.exchange, self.kind)
        if self.kind == "direct":
            declared = await channel.queue_declare(
                reply_queue(self.exchange, self.routing_key),
                exclusive=True,
                auto_delete=True,
                durable=False,
                arguments=dict(REPLY_QUEUE_ARGUMENTS),
            )
        else:
            declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
        queue = self._queue = str(declared.queue)
        binding = "" if self.kind == "fanout" else self.routing_key
        await channel.queue_bind(queue, self.exchange, routing_key=binding)
        consuming = await channel.basic_consume(queue, self._arrived, no_ack=True)
        self._consumer_tag = str(consuming.consumer_tag)
        channel.closing.add_done_callback(self._lost)

    async def _arrived(self, message: DeliveredMessage) -> None:
        envelope = self._to_envelope(message)
        envelope.properties.pop("priority", None)
        self.deliver(envelope, str(message.routing_key or ""))

    def _lost(self, _: object) -> None:
        if not self.closed:
            self.fail(
                BrokerUnreachable(
                    f"the subscription to {self.exchange!r} lost its channel to RabbitMQ at"
                    f" {self._describe}: subscribe again"
                )
            )

    async def _close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*UNREACHABLE, amqp_errors.AMQPError, RuntimeError):
                if self.kind == "direct" and self._queue is not None:
                    # Now, not when RabbitMQ gets round to auto-deleting it: a message sent
                    # to this key after close must find no queue (nor one opened again).
                    # The consumer first: a queue deleted under it is a cancellation the
                    # client logs as a warning.
                    if self._consumer_tag is not None:
                        await channel.basic_cancel(self._consumer_tag)
                    await channel.queue_delete(self._queue)
                await channel.close()
