"""The AMQP broker under failure: a worker killed with SIGKILL in the middle of 1,000
``acks_late`` tasks, on RabbitMQ (results in Redis; runs recorded as in the Redis tests).

RabbitMQ puts back what a dead worker held, with no visibility timeout to wait out. Unlike
Redis, it does not show which messages a consumer holds, so the test bounds reruns by what
the killed worker had started and by its prefetch window.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from services import (
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    amqp_vhost_url,
    delete_amqp_queues,
    delete_prefixed,
    redis_url,
    require_redis,
    wait_until,
)

from .conftest import AMQP_NAMES, WorkerProcess
from .test_redis_reliability import Stores, assert_clean_stop, runs, start_reliable

pytestmark = pytest.mark.integration
__all__ = ["start_reliable"]  # the fixture, used here too

CONCURRENCY, PREFETCH_MULTIPLIER = 50, 4


@pytest.fixture
def rabbit(amqp_vhost: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stores]:
    """Both sides on RabbitMQ (the session's vhost), results and records in Redis under this
    test's own prefix."""
    require_redis()
    url = amqp_vhost_url(amqp_vhost)
    prefix = f"celeriac-it-{uuid.uuid4().hex}:"
    env = {
        "CELERIAC_BROKER_URL": url,
        "CELERIAC_RESULT_BACKEND": redis_url(REDIS_DB_RESULTS),
        "CELERIAC_TEST_TRANSPORT_OPTIONS": json.dumps({}),
        "CELERIAC_TEST_RESULT_PREFIX": prefix,
        "CELERIAC_TEST_RECORD_URL": redis_url(REDIS_DB_BROKER),
        "CELERIAC_TEST_RECORD_PREFIX": prefix + "record:",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    record = redis.Redis.from_url(redis_url(REDIS_DB_BROKER))
    stores = Stores(prefix, record, redis.Redis.from_url(redis_url(REDIS_DB_RESULTS)), record)
    yield stores
    stores.close()
    delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)
    asyncio.run(delete_amqp_queues(AMQP_NAMES, url))


def test_kill_9_during_1000_acks_late_tasks_on_rabbitmq_loses_nothing(
    rabbit: Stores, start_reliable: Callable[..., WorkerProcess]
) -> None:
    """Every task succeeds; what ran twice had been started by the killed worker (and all of
    that did run again), and no more than its prefetch window."""
    import reliable

    reliable.configure_from_env()
    total = 1000
    seconds = [1.0 if i % 50 == 0 else 0.005 for i in range(total)]
    try:
        ids = [reliable.work.apply_async((s,)).id for s in seconds]
    finally:
        reliable.app.close()

    a = start_reliable("-c", str(CONCURRENCY), "-n", "A@rabbit")
    wait_until(lambda: rabbit.ended() >= 300, 30, "300 tasks to end on worker A")
    a.kill()
    assert a.proc.returncode == -signal.SIGKILL
    events_at_kill = rabbit.events()
    started_by_a = {e["id"] for e in events_at_kill if e["kind"] == "start"}
    ended_by_a = {e["id"] for e in events_at_kill if e["kind"] == "end"}
    interrupted = started_by_a - ended_by_a
    assert 300 <= len(ended_by_a) < total
    assert interrupted, "the kill interrupted no running task"

    b = start_reliable("-c", str(CONCURRENCY), "-n", "B@rabbit")
    rabbit.wait_all_succeeded(ids, timeout=60)
    assert_clean_stop(b)

    events = rabbit.events()
    assert all(e["pid"] in (a.proc.pid, b.proc.pid) for e in events)
    starts, ends = runs(events, "start"), runs(events, "end")
    assert set(starts) == set(ids), "some task never ran"
    assert all(ends[task_id] for task_id in ids), "some task never ended"
    twice = {task_id for task_id, s in starts.items() if len(s) > 1}
    assert all(len(s) <= 2 for s in starts.values()), "a task ran three times or more"
    assert interrupted <= twice, "a task running at the kill was not run again"
    assert twice <= started_by_a, "a task ran twice that the killed worker never started"
    assert len(twice) <= CONCURRENCY * PREFETCH_MULTIPLIER, "more reruns than A could hold"
    redelivered = {e["id"] for e in events if e["kind"] == "start" and e["redelivered"]}
    assert twice <= redelivered, "a rerun was not marked redelivered"
    print(
        f"\nA ended {len(ended_by_a)} task(s) before the kill, {len(interrupted)} running;"
        f" {len(twice)} task(s) ran twice: {sum(len(s) for s in starts.values())} runs in all"
    )
