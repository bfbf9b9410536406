"""What celeriac leaves in Redis, checked with a raw client: kombu's layout, Celery's records.

These pin the wire-level promises that the contract suite cannot see: key names, list
elements, the ``unacked`` bookkeeping, record format and TTL, PUBLISH, and that many waiters
share one pub/sub connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from celeriac import Celery
from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import PublishRequest, now
from celeriac.transports.redis.backend import RedisBackend, _Listener
from celeriac.transports.redis.broker import RedisBroker
from services import REDIS_DB_BROKER, REDIS_DB_RESULTS, delete_prefixed, redis_url, require_redis

WAIT = 5.0
SEP = "\x06\x16"


@pytest.fixture
def prefix() -> AsyncIterator[str]:
    require_redis()
    value = f"celeriac-layout-{uuid.uuid4().hex}:"
    yield value
    delete_prefixed(value, REDIS_DB_BROKER, REDIS_DB_RESULTS)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(REDIS_DB_BROKER))
    yield client
    await client.aclose()


async def broker_for(prefix: str, **options: Any) -> RedisBroker:
    broker = RedisBroker(
        redis_url(REDIS_DB_BROKER), options={"global_keyprefix": prefix, **options}
    )
    await broker.connect()
    return broker


def envelope(task_id: str) -> Envelope:
    return Envelope(
        b"[[1], {}, {}]",
        "application/json",
        "utf-8",
        {"task": "t.x", "id": task_id},
        {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2},
    )


async def until(check: Any, timeout: float = WAIT) -> Any:
    """Poll Redis state (not time) until ``check()`` is truthy; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not (value := await check()):  # noqa: ASYNC110 (the state is in Redis)
            await asyncio.sleep(0.01)
    return value


async def test_publish_writes_kombus_envelope_and_binding(prefix: str, raw: aioredis.Redis) -> None:
    broker = await broker_for(prefix)
    try:
        await broker.publish("work", envelope("id-1"), priority=9)  # most urgent: bare list
        await broker.publish("work", envelope("id-2"), priority=1)  # Celery 8: step 6
        element = json.loads(await raw.lindex(prefix + "work", 0))
        assert list(element) == [
            "body",
            "content-encoding",
            "content-type",
            "headers",
            "properties",
        ]
        properties = element["properties"]
        assert properties["delivery_info"] == {"exchange": "", "routing_key": "work"}
        assert (properties["priority"], properties["body_encoding"]) == (0, "base64")
        assert isinstance(properties["delivery_tag"], str) and properties["delivery_tag"]
        assert await raw.llen(f"{prefix}work{SEP}6") == 1
        members = await raw.smembers(f"{prefix}_kombu.binding.work")
        assert members == {f"work{SEP}{SEP}work".encode()}
    finally:
        await broker.close()


async def test_held_message_is_in_unacked_and_refreshed_then_restored_on_close(
    prefix: str, raw: aioredis.Redis
) -> None:
    broker = await broker_for(prefix, visibility_timeout=0.4)
    await broker.publish("work", envelope("id-1"))
    deliveries = broker.consume(["work"], prefetch=1)
    delivery = await asyncio.wait_for(anext(deliveries), WAIT)
    entry = json.loads(await raw.hget(prefix + "unacked", delivery.tag))
    assert entry[1:] == ["", "work"] and entry[0]["headers"]["id"] == "id-1"
    first = await raw.zscore(prefix + "unacked_index", delivery.tag)
    # Refreshed every visibility_timeout / 4 while held, so it is never restored meanwhile.
    await until(lambda: _score_above(raw, prefix, delivery.tag, first))
    lowest = f"{prefix}work{SEP}9"  # celeriac's priority 0 is Celery's 9 on Redis
    assert await raw.llen(lowest) == 0
    await broker.close()
    await deliveries.aclose()
    restored = json.loads(await raw.lindex(lowest, 0))
    assert restored["headers"]["redelivered"] is True
    assert restored["properties"]["delivery_info"]["redelivered"] is True
    assert restored["properties"]["delivery_tag"] == delivery.tag
    assert await raw.hlen(prefix + "unacked") == 0


async def test_a_window_of_thousands_is_claimed_in_one_call(
    prefix: str, raw: aioredis.Redis
) -> None:
    """-c 1000 holds 4,000 at once: the claim script records them all (Lua's unpack() takes
    about 8,000 values, so it must not pass all 8,000 of a 4,000-message HSET at once)."""
    broker = await broker_for(prefix)
    try:
        await broker.publish_many(
            [PublishRequest("work", envelope(f"id-{i}")) for i in range(5000)]
        )
        deliveries = broker.consume(["work"], prefetch=5000)
        seen = set()
        async with asyncio.timeout(30):
            while len(seen) < 5000:
                seen.add((await anext(deliveries)).tag)
        assert await raw.hlen(prefix + "unacked") == 5000
        assert await raw.zcard(prefix + "unacked_index") == 5000
        await deliveries.aclose()
    finally:
        await broker.close()


async def _score_above(raw: aioredis.Redis, prefix: str, tag: str, score: float) -> bool:
    current = await raw.zscore(prefix + "unacked_index", tag)
    return current is not None and current > score


async def test_a_dead_holder_is_restored_after_the_visibility_timeout(
    prefix: str, raw: aioredis.Redis
) -> None:
    """An entry nobody refreshes (its holder died) goes back to its list, marked."""
    element = json.dumps({"body": "", "headers": {}, "properties": {"delivery_tag": "t1"}})
    await raw.hset(prefix + "unacked", "t1", f'[{element}, "", "work"]')
    await raw.zadd(prefix + "unacked_index", {"t1": now() - 10})
    broker = await broker_for(prefix, visibility_timeout=5)
    deliveries = broker.consume(["other"], prefetch=1)  # consuming starts the sweeps
    try:
        task = asyncio.ensure_future(anext(deliveries))
        restored = await until(lambda: raw.lindex(prefix + "work", 0))
        assert json.loads(restored)["headers"] == {"redelivered": True}
        assert await raw.zcard(prefix + "unacked_index") == 0
        task.cancel()
        await asyncio.wait([task])  # the consumer ends its pop before the generator closes
    finally:
        await broker.close()
        await deliveries.aclose()


async def test_malformed_element_goes_to_dead_letters_with_one_log_line(
    prefix: str, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await broker_for(prefix)
    try:
        await raw.lpush(prefix + "work", b"this is not json")
        await broker.publish("work", envelope("good"))
        deliveries = broker.consume(["work"], prefetch=5)
        with caplog.at_level(logging.ERROR, logger="celeriac"):
            good = await asyncio.wait_for(anext(deliveries), WAIT)
        assert good.envelope.headers["id"] == "good"
        assert [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
        letters = await broker.dead_letters()
        assert len(letters) == 1 and letters[0].envelope.body == b"this is not json"
        assert "not a JSON envelope" in letters[0].reason
        await broker.ack(good)
        await deliveries.aclose()
    finally:
        await broker.close()


async def test_record_is_celerys_format_with_ttl_and_publish(prefix: str) -> None:
    app = Celery("layout", broker=redis_url(REDIS_DB_BROKER), backend=redis_url(REDIS_DB_RESULTS))
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.result_expires = 600
    raw = aioredis.Redis.from_url(redis_url(REDIS_DB_RESULTS))
    key = f"{prefix}celery-task-meta-abc"
    pubsub = raw.pubsub()
    try:
        await pubsub.subscribe(key)
        await pubsub.get_message(timeout=WAIT)  # the subscribe confirmation
        async with app.setup():
            await app.store_state("abc", "SUCCESS", {"x": 1})
        message = await pubsub.get_message(timeout=WAIT)
        stored = await raw.get(key)
        assert message is not None and message["data"] == stored
        record = json.loads(stored)
        assert list(record) == ["status", "result", "traceback", "children", "date_done", "task_id"]
        assert (record["status"], record["result"], record["task_id"]) == (
            "SUCCESS",
            {"x": 1},
            "abc",
        )
        assert 590 <= await raw.ttl(key) <= 600
    finally:
        await pubsub.aclose()
        await raw.aclose()


async def test_many_waiters_share_one_pubsub_connection(prefix: str) -> None:
    url = redis_url(REDIS_DB_RESULTS)
    waiting = RedisBackend(url, options={"global_keyprefix": prefix})
    storing = RedisBackend(url, options={"global_keyprefix": prefix})
    raw = aioredis.Redis.from_url(url)
    await waiting.connect()
    await storing.connect()
    ids = [uuid.uuid4().hex for _ in range(2000)]
    try:
        waits = [asyncio.ensure_future(waiting.wait(i, timeout=30)) for i in ids]
        name = f"{prefix}celery-task-meta-{ids[-1]}"
        await until(lambda: _subscribers(raw, name))
        clients = [c for c in await raw.client_list(_type="pubsub") if int(c["sub"]) >= len(ids)]
        assert len(clients) == 1  # one connection holds every waiter's subscription
        for i in ids:
            await storing.store(i, {"status": "SUCCESS", "result": i}, expires=60)
        records = await asyncio.gather(*waits)
        assert [r["result"] for r in records] == ids
    finally:
        await waiting.close()
        await storing.close()
        await raw.aclose()


async def _subscribers(raw: aioredis.Redis, channel: str) -> bool:
    counts = await raw.pubsub_numsub(channel)
    return bool(counts and counts[0][1])


async def test_a_result_stored_already_is_read_with_the_subscribe(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller who asks once the task is done is answered by the GET sent alongside the
    SUBSCRIBE, without waiting for the subscription's confirmation (and the read after it).

    The confirmation is held back here: on a slow machine it can otherwise arrive, and be
    read, in the same turn of the loop as the early GET's reply."""
    url = redis_url(REDIS_DB_RESULTS)
    backend = RedisBackend(url, options={"global_keyprefix": prefix})
    warm, done = uuid.uuid4().hex, uuid.uuid4().hex
    held: list[Any] = []
    arrived = asyncio.Event()
    pushed, deliver = _Listener._pushed, _Listener._deliver
    delivered: list[bytes] = []

    def counting(listener: _Listener, channel: bytes, data: bytes) -> None:
        delivered.append(channel)
        deliver(listener, channel, data)

    def holding_back(listener: _Listener, reply: Any) -> None:
        if reply[0] == b"subscribe" and reply[1] == backend.key(done).encode():
            held.append(reply)
            arrived.set()
        else:
            pushed(listener, reply)

    monkeypatch.setattr(_Listener, "_pushed", holding_back)
    monkeypatch.setattr(_Listener, "_deliver", counting)
    await backend.connect()
    try:
        for task_id in (warm, done):
            await backend.store(task_id, {"status": "SUCCESS", "result": task_id}, expires=60)
        await backend.wait(warm, timeout=WAIT)  # opens the subscription connection
        record = await backend.wait(done, timeout=WAIT)
        assert record["result"] == done
        listener = backend._listener
        assert listener is not None
        channel = backend.key(done).encode()
        assert channel not in listener._confirmed
        async with asyncio.timeout(WAIT):
            await arrived.wait()
        pushed(listener, held[0])  # late, it reads the key again

        async def confirmed() -> bool:
            return channel in listener._confirmed

        await until(confirmed)
        assert delivered.count(channel) == 1  # the late read delivered nothing twice
        assert (await backend.wait(done, timeout=WAIT))["result"] == done
    finally:
        await backend.close()
