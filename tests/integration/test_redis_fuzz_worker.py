"""Fuzz: raw poison payloads and poison envelopes pushed onto a Redis queue between good tasks
never stop a worker; each ends in the dead letters, or runs as the valid message it still is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence

import pytest

from celeriac.transports.broker import Broker
from celeriac.transports.redis import kombu
from celeriac.transports.redis.broker import RedisBroker
from poison import (
    draw_many,
    good_envelope,
    mark_app,
    poison_envelopes,
    poison_payloads,
    run_campaign,
)
from services import REDIS_DB_BROKER, REDIS_DB_RESULTS, delete_prefixed, redis_url, require_redis

#: Messages per run in the suite; scripts/poison_campaign.py runs thousands.
COUNT = 300
#: The issue's two findings, as a peer pushed them.
FOUND = [
    b'{"body":"","headers":{},"properties":{"delivery_tag":"\xff"}}',
    b'{"body":"","content-type":"application/json","headers":{"x":{"__type__":"datetime",'
    b'"__value__":"yesterday"}},"properties":{}}',
]


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    prefix = f"celeriac-fuzz-{uuid.uuid4().hex}:"
    yield prefix
    delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)


def redis_poison(queue: str, count: int) -> list[bytes]:
    """Raw list elements: the findings, raw payloads, and poison envelopes as kombu encodes
    them (so the envelope is well-formed JSON and the poison is in its fields)."""
    valid = kombu.encode(good_envelope("poison"), queue, 0).encode()
    encoded = poison_envelopes().map(lambda e: kombu.encode(e, queue, 0).encode())
    return FOUND + draw_many(poison_payloads(valid) | encoded, count)


async def push(queue: str, broker: Broker, payloads: Sequence[bytes]) -> None:
    assert isinstance(broker, RedisBroker)
    if payloads:
        key = broker.prefix + kombu.list_key(queue, 0)
        await broker.client.execute("LPUSH", key, *payloads)


def test_poison_never_stops_a_redis_worker(prefix: str) -> None:
    queue = f"fuzz-{uuid.uuid4().hex}"
    app, tally = mark_app(
        "fuzz",
        broker=redis_url(REDIS_DB_BROKER),
        backend=redis_url(REDIS_DB_RESULTS),
        broker_transport_options={"global_keyprefix": prefix, "visibility_timeout": 5.0},
    )
    poison = redis_poison(queue, COUNT)
    asyncio.run(
        run_campaign(app, tally, poison, lambda b, batch: push(queue, b, batch), queue=queue)
    )
    assert tally.dead >= len(FOUND), tally
