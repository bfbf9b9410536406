"""RabbitMQ's refusals met after a declaration (a message over the server's
``max_message_size`` is refused with PRECONDITION_FAILED when it is published; an ack on a
channel RabbitMQ closed for a refusal) are BrokerErrors naming them, or a lost channel,
never an outage. The shared RabbitMQ's limit is 128 MiB, too much to send in a test, so the
driver's refusal is raised here where the publish would meet it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiormq import exceptions as amqp_errors

from celeriac.errors import BrokerError, BrokerUnreachable
from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp import broker as amqp_broker
from celeriac.transports.amqp.broker import AmqpBroker

REFUSAL = "PRECONDITION_FAILED - message size 200 is larger than configured max size 100"


async def test_a_publish_the_server_refuses_is_a_broker_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = AmqpBroker("amqp://guest:guest@127.0.0.1:1//")

    async def refused(requests: Any) -> None:
        raise amqp_errors.ChannelPreconditionFailed(REFUSAL)

    monkeypatch.setattr(broker, "_publish_all", refused)
    envelope = Envelope(b"[[], {}, {}]", "application/json", "utf-8", {}, {})
    with pytest.raises(BrokerError) as info:
        await broker.publish("big", envelope)
    assert not isinstance(info.value, BrokerUnreachable)
    assert str(info.value).startswith(
        f"RabbitMQ refused to take a message for queue 'big': {REFUSAL} (a refusal, not an"
    )


async def test_an_ack_on_a_channel_closed_for_a_refusal_is_a_lost_channel() -> None:
    class Channel:
        closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def ack() -> None:
        raise amqp_errors.ChannelPreconditionFailed("PRECONDITION_FAILED - unknown delivery tag 7")

    await amqp_broker._Cutoffs().settle(Channel(), ack())  # type: ignore[arg-type]
