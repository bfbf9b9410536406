"""RabbitMQ refusing an operation is not an outage: a queue named ``amq.*`` is ACCESS_REFUSED
(the prefix is reserved), which is a BrokerError naming the refusal, never BrokerUnreachable
("is unreachable"), and a consumer of such a queue stops with it instead of retrying it as
an outage forever."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from celeriac.errors import BrokerError, BrokerUnreachable
from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp.broker import AmqpBroker
from services import amqp_vhost_url

pytestmark = pytest.mark.integration

WAIT = 10.0


def envelope() -> Envelope:
    return Envelope(b"[[], {}, {}]", "application/json", "utf-8", {"task": "t", "id": "1"}, {})


def reserved_queue() -> str:
    return f"amq.celeriac-test-{uuid.uuid4().hex}"


async def test_publishing_to_a_refused_queue_is_a_broker_error_naming_the_refusal(
    amqp_vhost: str,
) -> None:
    broker = AmqpBroker(amqp_vhost_url(amqp_vhost))
    await broker.connect()
    queue = reserved_queue()
    try:
        with pytest.raises(BrokerError) as info:
            await asyncio.wait_for(broker.publish(queue, envelope()), WAIT)
        assert not isinstance(info.value, BrokerUnreachable)
        text = str(info.value)
        assert "ACCESS_REFUSED" in text and queue in text
        assert "unreachable" not in text
        # The refusal closed one channel, not the connection: the broker still works.
        await broker.publish(f"q-{uuid.uuid4().hex}", envelope())
    finally:
        await broker.close()


async def test_consuming_a_refused_queue_stops_with_the_refusal(amqp_vhost: str) -> None:
    broker = AmqpBroker(amqp_vhost_url(amqp_vhost))
    await broker.connect()
    queue = reserved_queue()
    deliveries = broker.consume([queue], prefetch=1)
    try:
        with pytest.raises(BrokerError) as info:
            await asyncio.wait_for(anext(deliveries), WAIT)
        assert not isinstance(info.value, BrokerUnreachable)
        assert "ACCESS_REFUSED" in str(info.value)
    finally:
        await deliveries.aclose()
        await broker.close()
