"""Redis counters and leases stay under the result backend's ``global_keyprefix``, as
Celery's own keys do: two apps sharing a database with different prefixes never share one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from celeriac.transports.redis.backend import RedisBackend
from services import (
    REDIS_DB_RESULTS,
    REDIS_HOST,
    REDIS_PORT,
    delete_prefixed,
    redis_url,
    require_redis,
)


@pytest.fixture
async def prefixes() -> AsyncIterator[tuple[str, str]]:
    require_redis()
    test = f"celeriac-test-{uuid.uuid4().hex}"
    yield f"{test}-a:", f"{test}-b:"
    delete_prefixed(test, REDIS_DB_RESULTS)


async def backend(prefix: str) -> RedisBackend:
    made = RedisBackend(redis_url(REDIS_DB_RESULTS), options={"global_keyprefix": prefix})
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
