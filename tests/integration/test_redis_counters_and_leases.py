"""Redis counters, leases, documents and rate limits stay under the result backend's
``global_keyprefix``, as Celery's own keys do: two apps sharing a database with different
prefixes never share one. A rate limit reads Redis's clock: here it is held to its window by
counting the starts many concurrent callers get, at the server times it recorded them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from celeriac import errors
from celeriac.transports.redis import backend as redis_backend
from celeriac.transports.redis.backend import RedisBackend
from services import (
    REDIS_DB_RESULTS,
    REDIS_HOST,
    REDIS_PORT,
    delete_prefixed,
    eventually,
    free_port,
    redis_url,
    require_redis,
    wait_until,
)

from .private_redis import PrivateRedis

WAIT = 5.0


@pytest.fixture
async def prefixes() -> AsyncIterator[tuple[str, str]]:
    require_redis()
    test = f"celeriac-test-{uuid.uuid4().hex}"
    yield f"{test}-a:", f"{test}-b:"
    delete_prefixed(test, REDIS_DB_RESULTS)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(REDIS_DB_RESULTS))
    yield client
    await client.aclose()


async def backend(prefix: str, url: str = redis_url(REDIS_DB_RESULTS)) -> RedisBackend:
    made = RedisBackend(url, options={"global_keyprefix": prefix})
    await made.connect()
    return made


def keys(pattern: str) -> set[bytes]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_RESULTS)
    try:
        return set(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


async def test_counters_and_leases_live_under_the_key_prefix(prefixes: tuple[str, str]) -> None:
    first, second = prefixes
    one, two = await backend(first), await backend(second)
    counter, lease = f"count-{uuid.uuid4().hex}", f"lease-{uuid.uuid4().hex}"
    try:
        assert await one.incr(counter, expires=60) == 1
        assert await one.acquire_lease(lease, "holder-1", 60)
        assert keys(f"*{counter}*") == {f"{first}{counter}".encode()}
        assert keys(f"*{lease}*") == {f"{first}celeriac-lease-{lease}".encode()}
        # Another prefix is another namespace: its own counter, its own lease.
        assert await two.get_counter(counter) == 0
        assert await two.incr(counter) == 1
        assert await two.acquire_lease(lease, "holder-2", 60)
        assert await one.get_counter(counter) == 1
    finally:
        await one.close()
        await two.close()


async def test_advanced_counters_are_incr_counters_under_the_key_prefix(
    prefixes: tuple[str, str], raw: aioredis.Redis
) -> None:
    first, second = prefixes
    one, two = await backend(first), await backend(second)
    claimed, sent = f"claimed-{uuid.uuid4().hex}", f"sent-{uuid.uuid4().hex}"
    try:
        assert await one.advance_counter(claimed, 1_700_000_000_123, expires=60) == 0
        assert await one.init_counter(sent, 1_700_000_000_000) == 1_700_000_000_000
        assert await raw.get(f"{first}{claimed}") == b"1700000000123"  # as INCRBY keeps it
        assert 0 < await raw.pttl(f"{first}{claimed}") <= 60_000
        assert await raw.pttl(f"{first}{sent}") == -1  # no expires: kept until deleted
        assert await one.incr(claimed) == 1_700_000_000_124
        assert await two.advance_counter(claimed, 5) == 0  # another prefix, another counter
        # What is not an integer (a key of the application's own) is refused, not claimed.
        await raw.set(f"{first}not-a-counter", "text")
        with pytest.raises(errors.BrokerError, match="not an integer"):
            await one.advance_counter("not-a-counter", 5)
        with pytest.raises(errors.BrokerError, match="not an integer"):
            await one.init_counter("not-a-counter", 5)
        assert await raw.get(f"{first}not-a-counter") == b"text"
    finally:
        await one.close()
        await two.close()


async def test_documents_are_one_hash_per_collection_kept_until_deleted(
    prefixes: tuple[str, str], raw: aioredis.Redis
) -> None:
    first, second = prefixes
    one, two = await backend(first), await backend(second)
    entries = f"entries-{uuid.uuid4().hex}"
    try:
        await one.put_document(entries, "nightly", b'{"task": "a"}')
        key = f"{first}celeriac-documents-{entries}"
        assert keys(f"*{entries}*") == {key.encode()}
        assert await raw.hgetall(key) == {b"nightly": b'{"task": "a"}'}
        assert await raw.pttl(key) == -1
        assert await two.documents(entries) == {}  # another prefix, another collection
        assert await one.delete_document(entries, "nightly")
        assert keys(f"*{entries}*") == set()  # an empty hash is no key
    finally:
        await one.close()
        await two.close()


async def test_a_rate_limit_is_two_keys_that_expire_once_idle(
    prefixes: tuple[str, str], raw: aioredis.Redis
) -> None:
    first, _ = prefixes
    one = await backend(first)
    rate = f"rate-{uuid.uuid4().hex}"
    try:
        assert await one.acquire_rate(rate, 2, 0.5, 2) == 0.0
        assert await one.acquire_rate(rate, 2, 0.5, 2) == 0.0
        waits = [await one.acquire_rate(rate, 2, 0.5, 2) for _ in range(3)]
        assert 0 < waits[0] <= 0.5 and waits[1] - waits[0] == pytest.approx(0.25, abs=0.05)
        starts, retry = f"{first}celeriac-rate-starts-{rate}", f"{first}celeriac-rate-retry-{rate}"
        assert keys(f"*{rate}*") == {starts.encode(), retry.encode()}
        assert await raw.zcard(starts) == 2  # refusals record nothing
        assert 0 < await raw.pttl(starts) <= 501  # a period after the newest start
        assert 0 < await raw.pttl(retry) <= 1_251  # until the last retry time handed out
        await eventually(lambda: not keys(f"*{rate}*"), WAIT, "the rate limit's keys to expire")
        assert await one.acquire_rate(rate, 2, 0.5, 2) == 0.0  # a fresh window
    finally:
        await one.close()


async def test_a_short_refusal_is_told_its_own_wait_and_keeps_the_line_as_it_was(
    prefixes: tuple[str, str], raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By Redis's clock, with starts written at times read from it: a refusal no longer than
    the short wait (0.5 s here, so the test's own round trips do not matter) nor than
    ``period / limit`` is told as it is and leaves the next retry time alone; a longer one
    is queued and moves it."""
    monkeypatch.setattr(redis_backend, "SHORT_WAIT", 0.5)
    first, _ = prefixes
    store = await backend(first)
    rate, shared = f"rate-{uuid.uuid4().hex}", f"rate-{uuid.uuid4().hex}"
    starts, retry = f"{first}celeriac-rate-starts-{rate}", f"{first}celeriac-rate-retry-{rate}"

    async def leaving_in(key: str, seconds: float, period: float, members: int = 1) -> None:
        """Starts that leave the window ``seconds`` from now, by Redis's clock."""
        at, micros = await raw.time()
        score = at * 1_000_000 + micros - period * 1_000_000 + seconds * 1_000_000
        await raw.zadd(key, {f"seeded-{n}": score for n in range(members)})

    try:
        await leaving_in(starts, 2.0, 10.0)
        assert 1.9 < await store.acquire_rate(rate, 1, 10, 1) <= 2.0  # queued
        line = await raw.get(retry)
        assert line is not None
        await leaving_in(starts, 0.3, 10.0)  # the same start, now 0.3 s from leaving
        assert 0.2 < await store.acquire_rate(rate, 1, 10, 1) <= 0.3
        assert await raw.get(retry) == line
        # At 4 starts per 0.8 s, one caller's share is 0.2 s: a 0.3 s refusal is queued.
        shared_starts = f"{first}celeriac-rate-starts-{shared}"
        await leaving_in(shared_starts, 0.3, 0.8, members=4)
        assert 0.2 < await store.acquire_rate(shared, 4, 0.8, 4) <= 0.3
        assert await raw.get(f"{first}celeriac-rate-retry-{shared}") is not None
    finally:
        await store.close()


async def test_concurrent_callers_never_exceed_the_limit_and_use_nearly_all_of_it(
    prefixes: tuple[str, str], raw: aioredis.Redis
) -> None:
    """50 callers in two processes' worth of backends, each starting again as soon as it
    may (at the waits the limiter returns) for 2.5 s, under 20 starts per 0.5 s. Each start
    is read back from the limiter's sorted set, at the server time it was recorded: no
    half-open 0.5 s window holds more than 20, and the 2 s from the first start hold at
    least 95% of the 80 the limit allows."""
    limit, period, callers = 20, 0.5, 50
    first, _ = prefixes
    stores = [await backend(first), await backend(first)]
    rate = f"rate-{uuid.uuid4().hex}"
    starts_key = f"{first}celeriac-rate-starts-{rate}"
    granted: dict[bytes, int] = {}  # member -> server time in microseconds
    refused = 0

    async def read_starts() -> None:
        # Starts stay in the set a period; each grant reads it at once, so none is missed.
        listed = await raw.zrange(starts_key, 0, -1, withscores=True)
        granted.update((member, int(score)) for member, score in listed)

    async def caller(store: RedisBackend) -> None:
        nonlocal refused
        while True:
            wait = await store.acquire_rate(rate, limit, period, limit)
            if wait == 0:
                await read_starts()
            else:
                refused += 1
                await asyncio.sleep(wait)  # as told by the limiter: the behaviour under test

    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5), asyncio.TaskGroup() as group:
                for n in range(callers):
                    group.create_task(caller(stores[n % 2]))
        await read_starts()
    finally:
        for store in stores:
            await store.close()
    times = sorted(granted.values())
    window = round(period * 1_000_000)
    crowded = [
        (times[n - limit], times[n])
        for n in range(limit, len(times))
        if times[n] - times[n - limit] < window
    ]
    assert not crowded, f"{limit + 1} starts within {period} s: {crowded[:3]}"
    in_two_seconds = [t for t in times if t < times[0] + 4 * window]
    assert len(in_two_seconds) >= 0.95 * 4 * limit, (
        f"{len(in_two_seconds)} starts in 2 s of the {4 * limit} allowed ({refused} refusals)"
    )


async def test_an_unreachable_redis_raises_backend_unreachable_for_every_primitive() -> None:
    port = free_port()
    store = await backend("celeriac-test-nowhere:", f"redis://127.0.0.1:{port}/15")
    calls = {
        "count": lambda: store.incr("count"),
        "advance the counter": lambda: store.advance_counter("claimed", 1),
        "start the counter": lambda: store.init_counter("sent", 1),
        "store the document": lambda: store.put_document("entries", "a", b"1"),
        "read the documents": lambda: store.documents("entries"),
        "delete the document": lambda: store.delete_document("entries", "a"),
        "acquire the rate limit": lambda: store.acquire_rate("rate", 1, 1.0, 1),
        "acquire the lease": lambda: store.acquire_lease("lease", "holder", 1.0),
    }
    try:
        for doing, call in calls.items():
            with pytest.raises(errors.BackendUnreachable, match=f"cannot {doing}") as caught:
                await call()
            assert f"127.0.0.1:{port}" in str(caught.value)
            assert caught.value.__cause__ is not None
    finally:
        await store.close()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    """A private primary and its replica."""
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    # A replica syncs at once, not after the 5 s Redis waits for more replicas by default.
    primary = PrivateRedis(tmp_path / "primary", options=["--repl-diskless-sync-delay", "0"])
    primary.start()
    replica = PrivateRedis(
        tmp_path / "replica", options=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    try:
        replica.start()
        wait_until(
            lambda: replica.client.info("replication").get("master_link_status") == "up",
            15,
            "the replica to sync",
        )
        yield primary, replica
    finally:
        replica.close()
        primary.close()


async def test_the_scripts_replicate_their_effects(
    replicated: tuple[PrivateRedis, PrivateRedis],
) -> None:
    """Redis 7 replicates a script by what it wrote: the replica holds the same counters,
    start times (read from TIME on the primary) and next retry time, not values of its own."""
    primary, replica = replicated
    store = await backend("app:", primary.url(0))
    try:
        assert await store.advance_counter("claimed", 1_700_000_000_000, expires=60) == 0
        assert await store.init_counter("sent", 1_699_999_999_000) == 1_699_999_999_000
        await store.put_document("entries", "nightly", b"{}")
        assert [await store.acquire_rate("rate", 3, 60, 3) for _ in range(3)] == [0.0] * 3
        assert await store.acquire_rate("rate", 3, 60, 3) > 0
    finally:
        await store.close()
    assert primary.client.execute_command("WAIT", 1, 5000) == 1
    written = sorted(primary.client.keys("app:*"))
    assert len(written) == 5
    for key in written:
        kind = primary.client.type(key)
        dump = {
            b"string": lambda c, k: c.get(k),
            b"hash": lambda c, k: c.hgetall(k),
            b"zset": lambda c, k: c.zrange(k, 0, -1, withscores=True),
        }[kind]
        assert dump(replica.client, key) == dump(primary.client, key), key
