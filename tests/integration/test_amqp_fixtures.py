"""Every task message real Celery 5.7 put on RabbitMQ, published again exactly as captured
(AMQP properties, headers with their void fields, body) and read back by celeriac's AMQP
broker and the worker's parser: what a celeriac worker gets from a Celery producer.

The fixtures were routed to Celery's queues (``celery``, ``proto_other``, ...); here each goes
to one queue of this test's own, in the session's virtual host. ETAs and expiry times in the
headers are the captured ones: the broker passes them through, the worker decides.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiormq
import pytest
from aiormq import spec

from celeriac.protocol.message import parse_iso, parse_task_message
from celeriac.protocol.serialization import JSON
from celeriac.transports.amqp.broker import AmqpBroker
from services import FIXTURES_DIR, amqp_vhost_url, delete_amqp_queues

pytestmark = pytest.mark.integration

FIXTURES = sorted(FIXTURES_DIR.glob("amqp-*.json"))
PROPERTIES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id")


def _properties(captured: dict[str, Any]) -> Any:
    fields = {name: captured[name] for name in PROPERTIES if name in captured}
    for name in ("reply_to", "expiration"):
        if captured.get(name):
            fields[name] = captured[name]
    return spec.Basic.Properties(headers=captured["headers"], **fields)


async def test_every_amqp_fixture_crosses_rabbitmq_and_parses(amqp_vhost: str) -> None:
    assert len(FIXTURES) >= 20, f"the AMQP fixtures are missing from {FIXTURES_DIR}"
    url = amqp_vhost_url(amqp_vhost)
    queue = f"fixtures-{uuid.uuid4().hex}"
    captured = {}
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=True)
        for path in FIXTURES:
            fixture = json.loads(path.read_text())
            captured[fixture["properties"]["headers"]["id"], path.name] = fixture
            await channel.basic_publish(
                fixture["body_raw"].encode(),
                exchange="",
                routing_key=queue,
                properties=_properties(fixture["properties"]),
            )
    finally:
        await connection.close()

    broker = AmqpBroker(url)
    await broker.connect()
    seen = []
    try:
        deliveries = broker.consume([queue], prefetch=len(FIXTURES))
        for _ in FIXTURES:
            delivery = await anext(deliveries)
            message = parse_task_message(delivery.envelope, frozenset({JSON}))
            headers = delivery.envelope.headers
            matches = [f for (task_id, _), f in captured.items() if task_id == message.id]
            fixture = next(f for f in matches if f["properties"]["headers"] == headers)
            sent = fixture["properties"]
            args, kwargs, _ = fixture["body_decoded"]
            assert (message.task, message.args, message.kwargs) == (
                sent["headers"]["task"],
                args,
                kwargs,
            ), fixture["description"]
            eta, expires = sent["headers"]["eta"], sent["headers"]["expires"]
            assert message.eta == (parse_iso(eta) if eta else None)
            assert message.expires == (parse_iso(expires) if expires else None)
            assert message.retries == sent["headers"]["retries"]
            assert message.root_id == sent["headers"]["root_id"]
            assert message.parent_id == sent["headers"]["parent_id"]
            assert (message.reply_to or None) == (sent.get("reply_to") or None)
            assert delivery.priority == (sent.get("priority") or 0)
            assert delivery.envelope.properties.get("expiration") == sent.get("expiration")
            seen.append(delivery)
        await deliveries.aclose()
        for delivery in seen:
            await broker.ack(delivery)
        assert await broker.queue_sizes([queue]) == {}
    finally:
        await broker.close()
        await delete_amqp_queues([queue], url)
    assert len(seen) == len(FIXTURES)
