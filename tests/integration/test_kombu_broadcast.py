"""Broadcasts on Redis meet kombu's: a kombu ``Producer`` publishing to a fanout exchange
(as ``app.control.broadcast`` and Celery's events do) reaches ``RedisBroker.subscribe``, and
``RedisBroker.broadcast`` reaches a kombu consumer of a queue bound to a fanout exchange (as
a Celery worker's pidbox). Each test has an exchange of its own on the shared Redis (DB 14);
the one key kombu makes for it (its ``_kombu.binding.<exchange>`` set, and its member of the
deadlines set) is deleted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kombu
import pytest
import redis

from celeriac.protocol.envelope import Envelope
from celeriac.transports.redis.broker import RedisBroker
from services import REDIS_DB_BROKER, REDIS_HOST, REDIS_PORT, redis_url, require_redis

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture
def exchange() -> Iterator[str]:
    require_redis()
    name = f"celeriac-test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_BROKER)
    try:
        client.delete(f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
        client.zrem("_kombu.binding_deadlines", name)
    finally:
        client.close()


@pytest.fixture
async def broker() -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url(REDIS_DB_BROKER))
    await broker.connect()
    yield broker
    await broker.close()


def _kombu_publish(exchange: str, body: Any, routing_key: str, headers: dict[str, Any]) -> None:
    with kombu.Connection(redis_url(REDIS_DB_BROKER)) as connection:
        producer = connection.Producer(serializer="json")
        fanout = kombu.Exchange(exchange, type="fanout", durable=False)
        producer.publish(
            body,
            exchange=fanout,
            declare=[fanout],  # as Celery's mailbox and event dispatcher do
            routing_key=routing_key,
            headers=headers,
            delivery_mode=1,
        )


async def test_a_kombu_fanout_publish_reaches_a_subscriber(
    broker: RedisBroker, exchange: str
) -> None:
    body = {"method": "ping", "arguments": {}, "destination": None, "ticket": "t-1"}
    async with broker.subscribe(exchange) as messages:
        await asyncio.to_thread(_kombu_publish, exchange, body, "", {"clock": 7})
        envelope = await asyncio.wait_for(anext(messages), WAIT)
    assert json.loads(envelope.body) == body
    assert (envelope.content_type, envelope.content_encoding) == ("application/json", "utf-8")
    assert envelope.headers == {"clock": 7}


async def test_kombu_events_reach_a_topic_subscriber_by_routing_key(
    broker: RedisBroker, exchange: str
) -> None:
    """Celery's events on Redis: a fanout exchange whose routing key ends the channel name."""
    async with broker.subscribe(exchange, routing_key="worker.#", kind="topic") as workers:
        for key in ("task.succeeded", "worker.heartbeat"):
            body = {"type": key.replace(".", "-"), "hostname": "w1@test"}
            await asyncio.to_thread(_kombu_publish, exchange, body, key, {"hostname": "w1@test"})
        envelope = await asyncio.wait_for(anext(workers), WAIT)
    assert json.loads(envelope.body)["type"] == "worker-heartbeat"


async def test_a_broadcast_reaches_a_kombu_fanout_consumer(
    broker: RedisBroker, exchange: str
) -> None:
    received: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
    got_one, stop = threading.Event(), threading.Event()

    def consume() -> None:
        with kombu.Connection(redis_url(REDIS_DB_BROKER)) as connection:
            queue = kombu.Queue(
                f"{exchange}.node",
                exchange=kombu.Exchange(exchange, type="fanout", durable=False),
                routing_key="",
                auto_delete=True,
            )

            def on_message(body: Any, message: Any) -> None:
                received.append((body, dict(message.headers), dict(message.delivery_info)))
                message.ack()
                got_one.set()

            with connection.Consumer(queue, callbacks=[on_message], accept=["json"]):
                while not got_one.is_set() and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.1)

    consumer = asyncio.ensure_future(asyncio.to_thread(consume))
    body = {"method": "ping", "arguments": {}, "ticket": "t-2"}
    sent = Envelope(json.dumps(body).encode(), "application/json", "utf-8", {"clock": 3}, {})
    try:
        # kombu subscribes once its consumer first drains: broadcast until it is listening
        # (a broadcast reaches only who is subscribed when it is made).
        async with asyncio.timeout(WAIT):
            while not got_one.is_set():
                await broker.broadcast(exchange, sent)
                await asyncio.to_thread(got_one.wait, 0.1)
    finally:
        stop.set()
        await consumer
    got, headers, info = received[0]
    assert got == body
    assert headers == {"clock": 3}
    assert info["exchange"] == exchange
