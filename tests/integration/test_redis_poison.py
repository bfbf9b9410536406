"""Poison messages on Redis are data, never a crash: a running worker moves them to the dead
letters with a reason and their exact bytes, and goes on with the good work around them.

A message reaches a worker two ways, and each is checked: a claim (``claim.lua`` pops it with
others and records it in ``unacked``; Python reads it afterwards) and the blocking pop (BRPOP
hands the bytes over first; the worker reads them before it records anything). The sweep of
``unacked`` must survive such entries too, and so must ``celeriac status``, which reads the
dead letters back.

The poison here is the exact bytes issue 17 reported (a delivery tag that is not UTF-8; a
kombu datetime marker in the headers that does not decode). Every test has a key prefix and a
queue of its own on the shared Redis (DBs 14 and 15); nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from celeriac import Celery, sending
from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import DeadLetter
from celeriac.transports.redis import kombu
from celeriac.transports.redis.broker import DEAD_LETTERS, RedisBroker, _dead_letter
from celeriac.worker.worker import Worker
from services import (
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    delete_prefixed,
    eventually,
    redis_url,
    require_redis,
)

from .conftest import APPS

pytestmark = pytest.mark.integration

#: Finding 1: a delivery tag that is not UTF-8 (``printf '...\xff...' | redis-cli -x LPUSH``).
BAD_TAG = b'{"body":"","headers":{},"properties":{"delivery_tag":"\xff"}}'
#: Finding 2: a kombu type marker outside the body that cannot be decoded.
BAD_MARKER = (
    b'{"body":"","content-type":"application/json","headers":{"x":{"__type__":"datetime",'
    b'"__value__":"yesterday"}},"properties":{}}'
)
#: A task name cjson refuses to decode (a lone surrogate escape), so claim.lua dead-letters it.
SURROGATE_TASK = b'{"body":"","headers":{"task":"\\udcff"},"properties":{}}'
POISON = {"non-utf8-delivery-tag": BAD_TAG, "undecodable-header-marker": BAD_MARKER}
VISIBILITY_TIMEOUT = 2.0
WAIT = 20.0


@dataclass
class Scene:
    """One test's app (broker DB 14, results DB 15, under its own prefix), its queue, and a
    raw client on the broker's database."""

    app: Celery
    prefix: str
    queue: str
    raw: aioredis.Redis

    def key(self, name: str) -> str:
        return self.prefix + name

    async def dead_records(self) -> list[bytes]:
        records: list[bytes] = await self.raw.lrange(self.key(DEAD_LETTERS), 0, -1)
        return records

    async def unacked_fields(self) -> set[bytes]:
        return set(await self.raw.hkeys(self.key(kombu.UNACKED)))

    async def indexed(self) -> set[bytes]:
        return set(await self.raw.zrange(self.key(kombu.UNACKED_INDEX), 0, -1))


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    require_redis()
    prefix = f"celeriac-poison-{uuid.uuid4().hex}:"
    queue = f"poison-{uuid.uuid4().hex[:12]}"
    app = Celery("poison", broker=redis_url(REDIS_DB_BROKER), backend=redis_url(REDIS_DB_RESULTS))
    app.conf.broker_transport_options = {
        "global_keyprefix": prefix,
        "visibility_timeout": VISIBILITY_TIMEOUT,
    }
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.task_default_queue = queue

    @app.task(name="poison.add")
    async def add(x: int, y: int) -> int:
        return x + y

    raw = aioredis.Redis.from_url(redis_url(REDIS_DB_BROKER))
    try:
        async with app.setup():
            yield Scene(app, prefix, queue, raw)
    finally:
        await raw.aclose()
        delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)


async def broker_of(app: Celery) -> RedisBroker:
    broker = (await app.connection()).broker
    assert isinstance(broker, RedisBroker)
    return broker


async def with_worker(scene: Scene, work: Callable[[asyncio.Task[None]], Awaitable[None]]) -> None:
    """Run an in-process worker on the scene's queue around ``work(running)``; the worker
    must still be running when ``work`` ends, and stop cleanly."""
    worker = Worker(scene.app, queues=[scene.queue], concurrency=4)
    running = asyncio.get_running_loop().create_task(worker.run())
    try:
        await work(running)
        assert not running.done(), f"the worker stopped: {running.exception()!r}"
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), WAIT)
    assert running.exception() is None


async def add(scene: Scene, x: int, y: int) -> Any:
    return await scene.app.send_task("poison.add", (x, y), queue=scene.queue)


def raw_envelope(letter: DeadLetter) -> bytes:
    """What the dead letter kept of a message it could not decode: its bytes, as a body."""
    return letter.envelope.body


def record_payload(record: bytes) -> bytes:
    """The message bytes a dead-letter record keeps, read as the module docs say: the
    record decoded with ``surrogateescape``, its ``envelope`` string encoded back so."""
    data = json.loads(record.decode("utf-8", "surrogateescape"))
    payload: str = data["envelope"]
    return payload.encode("utf-8", "surrogateescape")


async def assert_dead_lettered(scene: Scene, poison: bytes) -> None:
    """The poison is the one dead letter, with a reason and its exact bytes, and nothing of
    it is left held (``unacked``, ``unacked_index``) or waiting."""
    broker = await broker_of(scene.app)

    async def one_letter() -> bool:
        return await broker.dead_letter_count() == 1

    await eventually(one_letter, WAIT, "the poison message in the dead letters")
    (letter,) = await broker.dead_letters()
    assert letter.queue == scene.queue
    assert letter.reason.startswith("malformed message: "), letter.reason
    assert raw_envelope(letter) == poison
    (record,) = await scene.dead_records()
    assert record_payload(record) == poison
    assert await scene.unacked_fields() == set()
    assert await scene.indexed() == set()
    assert await scene.raw.llen(scene.key(scene.queue)) == 0


@pytest.mark.parametrize("poison", POISON.values(), ids=POISON.keys())
async def test_poison_in_a_claim_is_dead_lettered_and_the_worker_goes_on(
    scene: Scene, poison: bytes
) -> None:
    """Queued before the worker starts, the poison comes in its first claim (``claim.lua``
    records it in ``unacked`` under its tag, which is not UTF-8 in one case)."""
    before = await add(scene, 1, 2)
    await scene.raw.lpush(scene.key(scene.queue), poison)
    after = await add(scene, 3, 4)

    async def work(running: asyncio.Task[None]) -> None:
        assert await before.get(timeout=WAIT) == 3
        assert await after.get(timeout=WAIT) == 7
        await assert_dead_lettered(scene, poison)

    await with_worker(scene, work)


@pytest.mark.parametrize("poison", POISON.values(), ids=POISON.keys())
async def test_poison_from_the_blocking_pop_is_dead_lettered_and_the_worker_goes_on(
    scene: Scene, poison: bytes
) -> None:
    """Pushed while the worker waits in BRPOP, the poison is read before it is held."""
    broker = await broker_of(scene.app)

    async def work(running: asyncio.Task[None]) -> None:
        assert await (await add(scene, 1, 2)).get(timeout=WAIT) == 3

        async def blocked() -> bool:  # the queue is empty: the consumer waits in BRPOP
            return any(blocker._waiting for blocker in broker._blockers)

        await eventually(blocked, WAIT, "the worker to wait in BRPOP")
        await scene.raw.lpush(scene.key(scene.queue), poison)
        await assert_dead_lettered(scene, poison)
        assert await (await add(scene, 3, 4)).get(timeout=WAIT) == 7

    await with_worker(scene, work)


async def test_sweep_dead_letters_unreadable_unacked_entries_and_restores_the_rest(
    scene: Scene,
) -> None:
    """Entries left in ``unacked`` by a worker that died, past the visibility timeout: one
    under a tag that is not UTF-8, one whose envelope is not UTF-8, one with a marker that
    does not decode, and a good one. The sweep restores the good one (it runs) and moves the
    others to the dead letters with their exact bytes."""
    good = scene.app.AsyncResult("sweep-good")
    envelope_of_good = await good_envelope(scene, "sweep-good")
    routing = json.dumps(scene.queue).encode()
    entries = {
        b"\xff": BAD_TAG,
        b"not-utf8-value": b'{"body":"\xfe","headers":{},"properties":{}}',
        b"bad-marker": BAD_MARKER,
        b"good-tag": kombu.encode(envelope_of_good, scene.queue, 0, "good-tag").encode(),
    }
    for tag, payload in entries.items():
        value = b"[" + payload + b', "", ' + routing + b"]"
        await scene.raw.hset(scene.key(kombu.UNACKED), tag, value)
        await scene.raw.zadd(scene.key(kombu.UNACKED_INDEX), {tag: 1.0})  # long overdue

    async def work(running: asyncio.Task[None]) -> None:
        assert await good.get(timeout=WAIT) == 5
        broker = await broker_of(scene.app)

        async def three_letters() -> bool:
            return await broker.dead_letter_count() == 3

        await eventually(three_letters, WAIT, "three dead letters")
        kept = {record_payload(record) for record in await scene.dead_records()}
        unacked_values = {b"[" + p + b', "", ' + routing + b"]" for p in list(entries.values())[:3]}
        assert kept == unacked_values
        assert {letter.reason.split(":")[0] for letter in await broker.dead_letters()} == {
            "unreadable unacked entry"
        }
        assert await scene.unacked_fields() == set()
        assert await scene.indexed() == set()

    await with_worker(scene, work)


async def test_messages_sharing_a_delivery_tag_are_each_held_and_settled(scene: Scene) -> None:
    """A peer that reuses delivery tags: two poison messages under one tag in one claim both
    reach the dead letters (under one tag, settling the first dropped the second), and a good
    task whose tag another worker holds runs without touching that worker's record."""
    elsewhere = b'[{"body":"","headers":{},"properties":{}}, "", "elsewhere"]'
    await scene.raw.hset(scene.key(kombu.UNACKED), "held-elsewhere", elsewhere)
    await scene.raw.zadd(scene.key(kombu.UNACKED_INDEX), {"held-elsewhere": 4e9})  # fresh
    good = kombu.encode(await good_envelope(scene, "shared-tag-good"), scene.queue, 0)
    first, second = (
        poison.replace(b'"properties":{}', b'"properties":{"delivery_tag":"twice"}')
        for poison in (BAD_MARKER, BAD_MARKER.replace(b"yesterday", b"tomorrow"))
    )
    reused = good.replace(json.loads(good)["properties"]["delivery_tag"], "held-elsewhere")
    await scene.raw.lpush(scene.key(scene.queue), first, second, reused.encode())

    async def work(running: asyncio.Task[None]) -> None:
        assert await scene.app.AsyncResult("shared-tag-good").get(timeout=WAIT) == 5
        broker = await broker_of(scene.app)

        async def two_letters() -> bool:
            return await broker.dead_letter_count() == 2

        await eventually(two_letters, WAIT, "both poison messages in the dead letters")
        assert {record_payload(r) for r in await scene.dead_records()} == {first, second}

        async def only_elsewhere_held() -> bool:
            return await scene.unacked_fields() == {b"held-elsewhere"}

        await eventually(only_elsewhere_held, WAIT, "the good task's ack")
        assert await scene.raw.hget(scene.key(kombu.UNACKED), "held-elsewhere") == elsewhere
        assert await scene.indexed() == {b"held-elsewhere"}

    await with_worker(scene, work)


async def good_envelope(scene: Scene, task_id: str) -> Envelope:
    """The envelope ``poison.add(2, 3)`` travels in."""
    plan = sending.plan(scene.app.conf, "poison.add", queue=scene.queue)
    return sending.build(plan, task_id, (2, 3), None)


async def test_status_reads_dead_letters_holding_raw_bytes(scene: Scene, tmp_path: Path) -> None:
    """``celeriac status`` on a database whose dead letters hold bytes that are not UTF-8:
    one written by ``claim.lua`` (the raw element inside its JSON string) and one written
    by Python; and one whose task name is a lone surrogate (an escape cjson refuses, Python
    reads), which print() cannot write as it is. It lists all three and exits 0."""
    broker = RedisBroker(redis_url(REDIS_DB_BROKER), options={"global_keyprefix": scene.prefix})
    await broker.connect()
    try:
        await scene.raw.lpush(scene.key(scene.queue), b"\xff\xfe not json", BAD_TAG, SURROGATE_TASK)
        await broker.publish(scene.queue, Envelope(b"[]", "application/json", "utf-8"))
        deliveries = broker.consume([scene.queue], prefetch=10)
        delivery = await asyncio.wait_for(anext(deliveries), WAIT)
        await broker.ack(delivery)
        await deliveries.aclose()
    finally:
        await broker.close()
    records = await scene.dead_records()
    assert {record_payload(record) for record in records} == {
        b"\xff\xfe not json",
        BAD_TAG,
        SURROGATE_TASK,
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(APPS),
        "CELERIAC_BROKER_URL": redis_url(REDIS_DB_BROKER),
        "CELERIAC_RESULT_BACKEND": redis_url(REDIS_DB_RESULTS),
        "CELERIAC_TEST_TRANSPORT_OPTIONS": json.dumps({"global_keyprefix": scene.prefix}),
    }
    argv = [sys.executable, "-m", "celeriac.cli", "-A", "basic:app", "status", "-Q", scene.queue]
    out = await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "dead letters: 3" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith(f"  [{scene.queue}]")]
    assert len(lines) == 3 and all("malformed message" in line for line in lines), out.stdout
    assert any("\\udcff" in line for line in lines), out.stdout


@pytest.mark.parametrize(
    "record",
    [
        b"not json at all \xff",
        b"[1, 2]",
        b'{"envelope": "\\ud800", "queue": 7, "reason": null, "died_at": 1' + b"0" * 400 + b"}",
        b'{"envelope": {"not": "a string"}, "died_at": "yesterday"}',
        b'{"queue": "q", "reason": "r", "died_at": 1.5, "envelope": "'
        + BAD_TAG.replace(b'"', b'\\"')
        + b'"}',
    ],
)
def test_any_dead_letter_record_reads_back(record: bytes) -> None:
    """Whatever the dead-letter list holds (a peer may push there too), reading it back
    never raises: ``status`` and ``dead_letters()`` list what is there."""
    letter = _dead_letter(record)
    assert isinstance(letter.queue, str) and isinstance(letter.reason, str)
    assert isinstance(letter.envelope.body, bytes) and isinstance(letter.died_at, float)
    if record.startswith(b'{"queue": "q"'):
        assert (letter.queue, letter.reason, letter.died_at) == ("q", "r", 1.5)
        assert letter.envelope.body == BAD_TAG
