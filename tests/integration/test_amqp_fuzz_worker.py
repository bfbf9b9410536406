"""Fuzz: poison messages published to a RabbitMQ queue by a raw AMQP client, between good
tasks, never stop a worker; each ends in the dead letters, or runs as the valid message it
still is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq import spec
from hypothesis import strategies as st

from celeriac.brokers.base import Broker, Envelope
from poison import draw_many, mark_app, poison_envelopes, run_campaign
from services import REDIS_DB_RESULTS, amqp_vhost_url, delete_amqp_queues, redis_url

#: Messages per run in the suite; scripts/poison_campaign.py runs thousands.
COUNT = 300


def amqp_properties(envelope: Envelope) -> spec.Basic.Properties:
    """The envelope as a peer's basic properties: typed fields only where the value has the
    field's type (AMQP itself refuses others), everything else in the headers table."""
    props = envelope.properties
    typed: dict[str, Any] = {}
    for name in ("correlation_id", "reply_to"):
        if isinstance(props.get(name), str) and len(props[name].encode()) < 256:
            typed[name] = props[name]
    priority = props.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority < 256:
        typed["priority"] = priority
    return spec.Basic.Properties(
        content_type=envelope.content_type[:200],
        content_encoding=envelope.content_encoding[:200],
        headers=envelope.headers,
        delivery_mode=2,
        **typed,
    )


@st.composite
def _raw_bytes_header(draw: st.DrawFn) -> Envelope:
    """A poison envelope with raw bytes (not UTF-8, as an AMQP table may carry) in a header."""
    envelope = draw(poison_envelopes())
    key = draw(st.sampled_from(["task", "id", "argsrepr", "x-custom"]))
    envelope.headers[key] = draw(st.binary(max_size=8)) + b"\xff"
    return envelope


#: What a peer can put in an AMQP message: every poison envelope, raw bytes in the headers.
envelopes = poison_envelopes() | _raw_bytes_header()


def sendable(envelope: Envelope) -> bool:
    """Whether an AMQP client can send the envelope at all (pamqp refuses, say, a float
    outside single precision in a table): what no peer can send is not poison."""
    try:
        amqp_properties(envelope).marshal()
    except (TypeError, ValueError, OverflowError):
        return False
    return True


async def publish_raw(url: str, queue: str, envelopes: Sequence[Envelope]) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        for envelope in envelopes:
            await channel.basic_publish(
                envelope.body, routing_key=queue, properties=amqp_properties(envelope)
            )
    finally:
        await connection.close()


def test_poison_never_stops_a_rabbitmq_worker(amqp_vhost: str) -> None:
    url = amqp_vhost_url(amqp_vhost)
    queue = f"fuzz-{uuid.uuid4().hex}"
    dead = f"fuzz-dead-{uuid.uuid4().hex}"
    app, tally = mark_app(
        "fuzz",
        broker=url,
        backend=redis_url(REDIS_DB_RESULTS),
        broker_transport_options={"dead_letter_queue": dead},
    )
    poison = draw_many(envelopes.filter(sendable), COUNT)

    async def inject(broker: Broker, batch: Sequence[Envelope]) -> None:
        await publish_raw(url, queue, batch)

    async def campaign() -> None:
        try:
            await run_campaign(app, tally, poison, inject, queue=queue)
        finally:
            await delete_amqp_queues([queue, dead], url)

    asyncio.run(campaign())
    assert tally.dead > 0, tally
