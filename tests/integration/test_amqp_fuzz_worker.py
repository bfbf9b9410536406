"""Fuzz: poison messages published to a RabbitMQ queue by a raw AMQP client, between good
tasks, never stop a worker; each ends in the dead letters, or runs as the valid message it
still is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import aiormq
from hypothesis import strategies as st

from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp.properties import Properties
from celeriac.transports.broker import Broker
from poison import (
    MARK_TASK,
    draw_many,
    json_values,
    mark_app,
    poison_envelopes,
    run_campaign,
)
from services import REDIS_DB_RESULTS, amqp_vhost_url, delete_amqp_queues, redis_url

#: Messages per run in the suite; scripts/poison_campaign.py runs thousands.
COUNT = 300


def amqp_properties(envelope: Envelope) -> Properties:
    """The envelope as a peer's basic properties: typed fields only where the value has the
    field's type (AMQP itself refuses others), everything else in the headers table; text
    escaped from bytes that are not UTF-8 goes out as those bytes."""
    props = envelope.properties
    typed: dict[str, Any] = {}
    for name in ("correlation_id", "reply_to"):
        if isinstance(props.get(name), str) and len(props[name].encode()) < 256:
            typed[name] = props[name]
    priority = props.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool) and 0 <= priority < 256:
        typed["priority"] = priority
    return Properties(
        content_type=envelope.content_type[:200],
        content_encoding=envelope.content_encoding[:200],
        headers=envelope.headers,
        delivery_mode=2,
        **typed,
    )


#: Text as the bytes of an AMQP short string that are not UTF-8 decode (``surrogateescape``;
#: celeriac's ``Properties`` writes such text back as those bytes).
_not_utf8 = st.binary(max_size=6).map(lambda b: (b + b"\xff").decode("utf-8", "surrogateescape"))


@st.composite
def _not_utf8_anywhere(draw: st.DrawFn) -> Envelope:
    """A poison envelope with bytes that are not UTF-8 where an AMQP peer can put them: a
    header's value (a long string or byte array), a header's name, or a short-string property
    (content type, correlation id, reply-to)."""
    envelope = draw(poison_envelopes())
    where = draw(st.sampled_from(["value", "name", "content_type", "property"]))
    if where == "value":
        key = draw(st.sampled_from(["task", "id", "argsrepr", "x-custom"]))
        envelope.headers[key] = draw(st.binary(max_size=8)) + b"\xff"
    elif where == "name":
        envelope.headers[draw(_not_utf8)] = draw(json_values)
    elif where == "content_type":
        envelope.content_type = draw(_not_utf8)
    else:
        envelope.properties[draw(st.sampled_from(["correlation_id", "reply_to"]))] = draw(_not_utf8)
    return envelope


#: What a peer can put in an AMQP message: every poison envelope, bytes that are not UTF-8.
envelopes = poison_envelopes() | _not_utf8_anywhere()


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


async def _dead_letter_properties(url: str, dead: str, count: int) -> list[Any]:
    """The properties of the first ``count`` messages in the dead-letter queue (taken)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        messages = [await channel.basic_get(dead, no_ack=True) for _ in range(count)]
        return [message.header.properties for message in messages]
    finally:
        await connection.close()


def test_short_strings_that_are_not_utf8_are_dead_letters_kept_byte_for_byte(
    amqp_vhost: str,
) -> None:
    """pamqp reads short strings as strict UTF-8 while it reads a frame: such a message used to
    end the worker's connection, and came back to the next one, and the next. It is a dead
    letter now, and its bytes are the ones that came."""
    url = amqp_vhost_url(amqp_vhost)
    queue, dead = f"fuzz-{uuid.uuid4().hex}", f"fuzz-dead-{uuid.uuid4().hex}"
    app, tally = mark_app(
        "fuzz",
        broker=url,
        backend=redis_url(REDIS_DB_RESULTS),
        broker_transport_options={"dead_letter_queue": dead},
    )
    content_type = b"\xff\xfeapplication/json".decode("utf-8", "surrogateescape")
    name = b"x-\xff".decode("utf-8", "surrogateescape")
    poison = [
        Envelope(b"[[], {}, {}]", content_type, "utf-8", {"task": MARK_TASK, "id": "a"}, {}),
        Envelope(b"[[], {}, {}]", "application/json", "utf-8", {name: "v"}, {}),
    ]

    async def inject(broker: Broker, batch: Sequence[Envelope]) -> None:
        await publish_raw(url, queue, batch)

    async def campaign() -> list[Any]:
        try:
            await run_campaign(app, tally, poison, inject, queue=queue, turn=1)
            return await _dead_letter_properties(url, dead, len(poison))
        finally:
            await delete_amqp_queues([queue, dead], url)

    letters = asyncio.run(campaign())
    assert tally.dead == 2, tally
    assert sorted(p.content_type for p in letters) == sorted(["application/json", content_type])
    assert any(name in (p.headers or {}) for p in letters), letters
