"""A deferred (ETA) message on Redis runs once and is never lost while several workers sweep.

Every worker sweeps ``unacked_index`` for due entries: it reads the due tags, then their
``unacked`` values, then restores them, in three round trips. Meanwhile another worker may
restore the same entry and a third claim it again under the same delivery tag (the tag
travels in the message), so what the first sweep read may no longer describe the entry it
acts on. The first two tests replay such interleavings step by step, with a hook on the
sweeping broker's client that runs the other workers' steps between its round trips; the
last one runs three worker processes on many ETAs, as the race was first seen.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import now
from celeriac.transports.redis import kombu
from celeriac.transports.redis.broker import RedisBroker
from services import REDIS_DB_BROKER, delete_prefixed, redis_url, require_redis

pytestmark = pytest.mark.integration

QUEUE = "work"
VISIBILITY_TIMEOUT = 30.0


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    value = f"celeriac-deferred-{uuid.uuid4().hex}:"
    yield value
    delete_prefixed(value, REDIS_DB_BROKER)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(REDIS_DB_BROKER))
    yield client
    await client.aclose()


@pytest.fixture
async def brokers(prefix: str) -> AsyncIterator[Callable[[], Awaitable[RedisBroker]]]:
    """Brokers on the test's prefix, as many as asked (one per worker), closed afterwards.
    None consumes, so none sweeps but when the test calls ``_sweep``."""
    made: list[RedisBroker] = []

    async def make() -> RedisBroker:
        broker = RedisBroker(
            redis_url(REDIS_DB_BROKER),
            options={"global_keyprefix": prefix, "visibility_timeout": VISIBILITY_TIMEOUT},
        )
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


async def due_entry(raw: aioredis.Redis, prefix: str) -> str:
    """A parked message whose ETA has come, left by a worker: its ``unacked`` value and an
    index score older than the visibility timeout. Returns its delivery tag."""
    tag = str(uuid.uuid4())
    envelope = Envelope(
        b"[[1], {}, {}]",
        "application/json",
        "utf-8",
        {"task": "t.deferred", "id": tag, "eta": "2020-01-01T00:00:00+00:00"},
        {"correlation_id": tag, "reply_to": "", "delivery_mode": 2},
    )
    payload = kombu.encode(envelope, QUEUE, 0, tag).encode()
    await raw.hset(prefix + kombu.UNACKED, tag, kombu.unacked_entry(payload, QUEUE))
    await raw.zadd(prefix + kombu.UNACKED_INDEX, {tag: now() - VISIBILITY_TIMEOUT - 1.0})
    return tag


def around_hmget(
    monkeypatch: pytest.MonkeyPatch,
    broker: RedisBroker,
    before: Callable[[], Awaitable[Any]],
    after: Callable[[], Awaitable[Any]],
) -> None:
    """Run ``before`` and ``after`` around the HMGET of ``broker``'s sweep: between its
    read of the due tags and its restores."""
    execute = broker.client.execute

    async def hooked(*args: Any, **kwargs: Any) -> Any:
        if args[0] != "HMGET":
            return await execute(*args, **kwargs)
        await before()
        reply = await execute(*args, **kwargs)
        await after()
        return reply

    monkeypatch.setattr(broker.client, "execute", hooked)


async def waiting(raw: aioredis.Redis, prefix: str) -> int:
    return sum([await raw.llen(prefix + key) for key in kombu.consume_keys([QUEUE])])


async def nothing() -> None:
    pass


async def test_a_sweep_keeps_the_index_entry_of_a_message_claimed_again_meanwhile(
    brokers: Callable[[], Awaitable[RedisBroker]],
    raw: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep finds the entry gone (another sweep restored it) and, before it acts, a
    worker claims the message again under the same tag: the claim's index entry must stay,
    or the message is never refreshed nor restored (lost if its worker dies, or parks it)."""
    sweeper, peer = await brokers(), await brokers()
    tag = await due_entry(raw, prefix)

    async def claim_it() -> None:
        assert [held.tag for held in await peer._claim([QUEUE], 10)] == [tag]

    around_hmget(monkeypatch, sweeper, peer._sweep, claim_it)
    await sweeper._sweep()

    assert await raw.hexists(prefix + kombu.UNACKED, tag)
    assert await raw.zscore(prefix + kombu.UNACKED_INDEX, tag) is not None
    assert await waiting(raw, prefix) == 0


async def test_a_sweep_does_not_restore_a_message_whose_ack_is_under_way(
    brokers: Callable[[], Awaitable[RedisBroker]],
    raw: aioredis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep reads the entry of a worker that claimed the message again and is acking
    it (an ack removes the index entry first, then the ``unacked`` one, as kombu's does):
    an entry with no index score is not due, and restoring it would run the message twice."""
    sweeper, peer = await brokers(), await brokers()
    tag = await due_entry(raw, prefix)

    async def claim_and_start_acking() -> None:
        await peer._sweep()
        assert [held.tag for held in await peer._claim([QUEUE], 10)] == [tag]
        await raw.zrem(prefix + kombu.UNACKED_INDEX, tag)

    around_hmget(monkeypatch, sweeper, claim_and_start_acking, nothing)
    await sweeper._sweep()
    await raw.hdel(prefix + kombu.UNACKED, tag)  # the ack's second step
    peer._held.clear()  # acked: nothing for its close() to give back

    assert await waiting(raw, prefix) == 0


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("round_", range(3))
def test_many_etas_on_three_worker_processes_run_once_each(
    supervise: Any, basic: Any, marks: Path, round_: int
) -> None:
    """120 ETAs 1 to 3 s ahead, three processes of four: each task runs exactly once (with
    the suite's 2 s visibility timeout, every parked message is due within the run)."""
    supervisor = supervise("-P", "3", "-c", "4", "-l", "info", app="deferred_starts:app")
    supervisor.pids_ready(3)
    sent = [
        basic.app.send_task("deferred.record", (n,), countdown=1.0 + 0.1 * (n % 20))
        for n in range(120)
    ]
    assert sorted(result.get(timeout=30) for result in sent) == list(range(120))
    starts = Counter(line.split()[2] for line in (marks / "starts").read_text().splitlines())
    assert {n: count for n, count in starts.items() if count > 1} == {}
