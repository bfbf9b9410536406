"""The AMQP broker under failure (results in Redis; runs recorded as in the Redis tests): a
worker killed with SIGKILL in the middle of 1,000 ``acks_late`` tasks; RabbitMQ stopped and
started again (``rabbitmqctl stop_app`` / ``start_app``) mid-run; tasks that run longer than
RabbitMQ's ``consumer_timeout``. The last two use a private node whose ``consumer_timeout``
is a few seconds (the shared node's is 30 minutes).

RabbitMQ puts back what a dead worker held, with no visibility timeout to wait out. Unlike
Redis, it does not show which messages a consumer holds, so the test bounds reruns by what
the killed worker had started and by its prefetch window.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from celeriac.errors import BrokerError
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
from .private_rabbitmq import PrivateRabbitMQ
from .test_redis_reliability import Stores, assert_clean_stop, runs, start_reliable

pytestmark = pytest.mark.integration
__all__ = ["start_reliable"]  # the fixture, used here too

CONCURRENCY, PREFETCH_MULTIPLIER = 50, 4
#: The private node's consumer_timeout (it checks every second), and the worker's setting.
CONSUMER_TIMEOUT_S = 4


@contextmanager
def recorded_on_rabbitmq(
    url: str, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any] | None = None
) -> Iterator[Stores]:
    """Both sides on RabbitMQ at ``url`` (with these transport options), results and records
    in Redis under this test's own prefix."""
    require_redis()
    prefix = f"celeriac-it-{uuid.uuid4().hex}:"
    env = {
        "CELERIAC_BROKER_URL": url,
        "CELERIAC_RESULT_BACKEND": redis_url(REDIS_DB_RESULTS),
        "CELERIAC_TEST_TRANSPORT_OPTIONS": json.dumps(options or {}),
        "CELERIAC_TEST_RESULT_PREFIX": prefix,
        "CELERIAC_TEST_RECORD_URL": redis_url(REDIS_DB_BROKER),
        "CELERIAC_TEST_RECORD_PREFIX": prefix + "record:",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    record = redis.Redis.from_url(redis_url(REDIS_DB_BROKER))
    stores = Stores(prefix, record, redis.Redis.from_url(redis_url(REDIS_DB_RESULTS)), record)
    try:
        yield stores
    finally:
        stores.close()
        delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)
        asyncio.run(delete_amqp_queues(AMQP_NAMES, url))


@pytest.fixture
def rabbit(amqp_vhost: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stores]:
    """On the shared RabbitMQ, in the session's vhost."""
    with recorded_on_rabbitmq(amqp_vhost_url(amqp_vhost), monkeypatch) as stores:
        yield stores


@pytest.fixture(scope="module")
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A node of this module's own, which its tests may stop."""
    node = PrivateRabbitMQ(consumer_timeout_ms=CONSUMER_TIMEOUT_S * 1000)
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture
def private_rabbit(
    private_rabbitmq: PrivateRabbitMQ, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stores]:
    options = {"consumer_timeout": CONSUMER_TIMEOUT_S}
    with recorded_on_rabbitmq(private_rabbitmq.url, monkeypatch, options) as stores:
        yield stores


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


@pytest.mark.timeout(180)  # the private node starts in 10-30 s before the first of these
def test_rabbitmq_restart_mid_run_loses_nothing(
    private_rabbit: Stores,
    private_rabbitmq: PrivateRabbitMQ,
    start_reliable: Callable[..., WorkerProcess],
) -> None:
    """300 tasks (50-100 ms each) while RabbitMQ stops (``stop_app``) and starts again: the
    worker logs the outage and the recovery, one line each, and never exits; a publish during
    the outage fails with an error that names it, and the same producer publishes again once
    RabbitMQ is back; every task ends SUCCESS, and only tasks started before RabbitMQ came
    back (held by the worker, or acknowledged while it was away) may run twice."""
    import reliable

    stores = private_rabbit
    reliable.configure_from_env()
    total = 300
    try:
        ids = [reliable.work.apply_async((0.05 + (i % 6) * 0.01,)).id for i in range(total)]
        worker = start_reliable("-c", "10")
        wait_until(lambda: stores.ended() >= 60, 30, "60 tasks to end before the outage")
        private_rabbitmq.stop_app()
        ended_at_stop = stores.ended()
        assert ended_at_stop < total, "the worker ran everything before RabbitMQ stopped"
        down = worker.wait_for("is unreachable", timeout=15)
        with pytest.raises(BrokerError, match="unreachable"):
            reliable.work.apply_async((0.01,))

        private_rabbitmq.start_app()
        up_at = time.time()
        more = [reliable.work.apply_async((0.01,)).id for _ in range(50)]
        back = worker.wait_for("is reachable again", timeout=30)
        stores.wait_all_succeeded(ids + more, timeout=60)
    finally:
        reliable.app.close()
    assert worker.proc.poll() is None, "the worker exited:\n" + worker.log()
    assert_clean_stop(worker)
    outage_lines = [line for line in worker.log().splitlines() if "RabbitMQ at" in line]
    assert [_outage_state(line) for line in outage_lines] == ["down", "up"], outage_lines

    starts = runs(stores.events())
    assert set(starts) == set(ids + more), "some task never ran"
    twice = {task_id for task_id, s in starts.items() if len(s) > 1}
    started_before_up = {task_id for task_id, s in starts.items() if s[0]["at"] < up_at}
    assert twice <= started_before_up, f"ran again though acknowledged: {sorted(twice)}"
    assert all(len(s) <= 2 for s in starts.values()), "a task ran three times or more"
    print(
        f"\n{ended_at_stop} of {total} ended before RabbitMQ stopped; {len(twice)} task(s) ran"
        f" twice;\nworker: {down}\nworker: {back}"
    )


@pytest.mark.timeout(180)
def test_tasks_longer_than_consumer_timeout_run_once(
    private_rabbit: Stores,
    private_rabbitmq: PrivateRabbitMQ,
    start_reliable: Callable[..., WorkerProcess],
) -> None:
    """A task 1.5x RabbitMQ's consumer_timeout runs once, with short tasks waiting behind it
    in the worker's buffer all that time (one slot, prefetch 4): the worker moves its holds
    before the timeout (at half of it, so each hold moves twice), so RabbitMQ never closes
    its channel and nothing runs twice."""
    import reliable

    stores = private_rabbit
    reliable.configure_from_env()
    seconds = [1.5 * CONSUMER_TIMEOUT_S] + [0.01] * 20
    try:
        ids = [reliable.work.apply_async((s,)).id for s in seconds]
        worker = start_reliable("-c", "1")
        stores.wait_all_succeeded(ids, timeout=60)
    finally:
        reliable.app.close()
    assert_clean_stop(worker)

    starts = runs(stores.events())
    assert {task_id: len(s) for task_id, s in starts.items()} == dict.fromkeys(ids, 1)
    timed_out = "delivery acknowledgement on channel"
    assert timed_out not in private_rabbitmq.log(), "RabbitMQ closed a channel at its timeout"
    assert "could not renew" not in worker.log()
    queues = _queue_table(private_rabbitmq)
    parking = [name for name in queues if name.startswith("celeriac.parked.")]
    assert parking, f"nothing was parked: {queues}"
    assert all(count == 0 for count in queues.values()), queues


@pytest.mark.timeout(180)
def test_a_parked_task_whose_worker_dies_runs_again_elsewhere(
    private_rabbit: Stores,
    private_rabbitmq: PrivateRabbitMQ,
    start_reliable: Callable[..., WorkerProcess],
) -> None:
    """A long task held as a parked copy when its worker is killed goes back to its queue
    (the copy's short TTL ends at once and dead-letters it home), and another worker runs it."""
    import reliable

    stores = private_rabbit
    reliable.configure_from_env()
    try:
        task_id = reliable.work.apply_async((1.5 * CONSUMER_TIMEOUT_S,)).id
        a = start_reliable("-c", "1", "-n", "A@rabbit")
        wait_until(lambda: _parked_and_held(private_rabbitmq), 30, "the task's hold to be parked")
        a.kill()
        b = start_reliable("-c", "1", "-n", "B@rabbit")
        stores.wait_all_succeeded([task_id], timeout=60)
    finally:
        reliable.app.close()
    assert_clean_stop(b)
    starts = runs(stores.events())[task_id]
    assert [s["pid"] for s in starts] == [a.proc.pid, b.proc.pid]
    assert all(count == 0 for count in _queue_table(private_rabbitmq).values())


def _outage_state(line: str) -> str:
    """What a worker's log line about RabbitMQ says: it went ("down") or came back ("up")."""
    if "is unreachable" in line:
        return "down"
    return "up" if "is reachable again" in line else line


def _queue_table(node: PrivateRabbitMQ, column: str = "messages") -> dict[str, int]:
    lines = node.ctl("list_queues", "--quiet", "--no-table-headers", "name", column)
    table = (line.split("\t") for line in lines.splitlines() if line.strip())
    return {name: int(count) for name, count in table}


def _parked_and_held(node: PrivateRabbitMQ) -> bool:
    held = _queue_table(node, "messages_unacknowledged")
    return any(n.startswith("celeriac.parked.") and count for n, count in held.items())
