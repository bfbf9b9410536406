"""The Redis broker under failure: a worker killed mid-run, ETAs and long tasks beyond the
visibility timeout with two workers, and a Redis restart under a running worker.

Redis only. Every task of the ``reliable`` app records its start and end (with its pid and
the time) on the shared test Redis, so a test can count exactly how often each task ran,
and by which worker, even while the broker's Redis is down. Nothing waits by sleeping:
tests poll Redis state (events, results, the broker's keys) or wait for log lines, always
with a deadline.

The last test pins down a bug found on the way: at shutdown, the consumer's blocking pop must
be woken with CLIENT UNBLOCK (through another connection), not left to time out.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac.transports.redis import kombu
from celeriac.transports.redis.backend import KEY_PREFIX as RESULT_KEY_PREFIX
from services import (
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    delete_prefixed,
    redis_url,
    require_redis,
    wait_until,
)

from .conftest import APPS, READY, WorkerProcess
from .private_redis import PrivateRedis

pytestmark = pytest.mark.integration

#: Short, so a dead worker's messages come back within seconds.
VISIBILITY_TIMEOUT = 2.0
QUEUE = "celery"


# -- helpers -------------------------------------------------------------------------------


@dataclass
class Stores:
    """Where one test's data lives: the broker's and results' Redis (shared or private), and
    the recording Redis (always the shared one), all under the test's own key prefix."""

    prefix: str
    broker: redis.Redis
    results: redis.Redis
    record: redis.Redis

    @property
    def record_prefix(self) -> str:
        return self.prefix + "record:"

    def ended(self) -> int:
        return int(self.record.get(self.record_prefix + "ended") or 0)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.record.lrange(self.record_prefix + "events", 0, -1)]

    def states(self, ids: list[str]) -> dict[str, str | None]:
        """Each task's result state (None: no record yet)."""
        keys = [f"{self.prefix}{RESULT_KEY_PREFIX}{task_id}" for task_id in ids]
        out: dict[str, str | None] = {}
        for start in range(0, len(keys), 500):
            values = self.results.mget(keys[start : start + 500])
            for task_id, value in zip(ids[start : start + 500], values, strict=True):
                out[task_id] = None if value is None else json.loads(value)["status"]
        return out

    def wait_all_succeeded(self, ids: list[str], timeout: float) -> None:
        def done() -> bool:
            return all(state == "SUCCESS" for state in self.states(ids).values())

        try:
            wait_until(done, timeout, f"{len(ids)} SUCCESS results")
        except AssertionError:
            counts = Counter(self.states(ids).values())
            raise AssertionError(f"not every task succeeded in {timeout} s: {counts}") from None

    def held(self) -> dict[str, dict[str, Any]]:
        """Task id -> envelope of every message in ``unacked`` (held or parked)."""
        out = {}
        for value in self.broker.hgetall(self.prefix + kombu.UNACKED).values():
            envelope = json.loads(value)[0]
            out[envelope["headers"]["id"]] = envelope
        return out

    def waiting(self) -> int:
        return sum(self.broker.llen(self.prefix + k) for k in kombu.consume_keys([QUEUE]))

    def assert_broker_empty(self) -> None:
        """Nothing left to run: no waiting, held, parked or indexed message."""
        assert self.waiting() == 0
        assert self.broker.hlen(self.prefix + kombu.UNACKED) == 0
        assert self.broker.zcard(self.prefix + kombu.UNACKED_INDEX) == 0

    def close(self) -> None:
        for client in (self.broker, self.results, self.record):
            client.close()


def runs(events: Iterable[dict[str, Any]], kind: str = "start") -> dict[str, list[dict[str, Any]]]:
    """Task id -> its ``kind`` events, in order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["kind"] == kind:
            out[event["id"]].append(event)
    return out


# -- fixtures ------------------------------------------------------------------------------


def _use_stores(monkeypatch: pytest.MonkeyPatch, broker_url: str, backend_url: str) -> str:
    """Point both sides (this process and the workers it starts) at these stores, under a
    fresh key prefix (returned); runs are recorded on the shared Redis, DB 14."""
    prefix = f"celeriac-it-{uuid.uuid4().hex}:"
    options = {"global_keyprefix": prefix, "visibility_timeout": VISIBILITY_TIMEOUT}
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_RESULT_BACKEND": backend_url,
        "CELERIAC_TEST_TRANSPORT_OPTIONS": json.dumps(options),
        "CELERIAC_TEST_RECORD_URL": redis_url(REDIS_DB_BROKER),
        "CELERIAC_TEST_RECORD_PREFIX": prefix + "record:",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return prefix


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stores]:
    """The shared test Redis (broker DB 14, results DB 15) under this test's own prefix."""
    require_redis()
    prefix = _use_stores(monkeypatch, redis_url(REDIS_DB_BROKER), redis_url(REDIS_DB_RESULTS))
    stores = Stores(
        prefix,
        redis.Redis.from_url(redis_url(REDIS_DB_BROKER)),
        redis.Redis.from_url(redis_url(REDIS_DB_RESULTS)),
        redis.Redis.from_url(redis_url(REDIS_DB_BROKER)),
    )
    yield stores
    stores.close()
    delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)


@pytest.fixture
def reliable(shared: Stores) -> Iterator[Any]:
    """The ``reliable`` app module, configured for the ``shared`` stores; its sync
    connections closed afterwards."""
    import reliable as module  # type: ignore[import-not-found]

    module.configure_from_env()
    yield module
    module.app.close()


@pytest.fixture
def start_reliable(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``celeriac -A reliable:app worker``, in the environment the test set; killed (if still
    running) and reaped afterwards."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "celeriac.cli", "-A", "reliable:app", "worker"]
        worker = WorkerProcess([*argv, "-l", "info", *args], env, tmp_path)
        started.append(worker)
        worker.wait_for(READY)
        return worker

    yield start
    for worker in started:
        worker.close()


def assert_clean_stop(worker: WorkerProcess) -> None:
    """Stop gracefully: exit code 0; until the shutdown began, no traceback and no worker bug.

    (The shutdown itself can log a "Task exception was never retrieved" traceback from
    ``_Blocker.unblock``: a known bug, pinned down by
    ``test_idle_worker_shutdown_wakes_its_blocking_pop_with_client_unblock``.)
    """
    assert worker.stop(timeout=30) == 0, worker.log()
    worker.wait_for(" stopped after ")
    log = worker.log()
    running = log.split("shutting down gracefully")[0]
    assert "worker bug" not in log, log
    if "Traceback" in running:
        lines = running.splitlines()
        first = next(i for i, line in enumerate(lines) if "Traceback" in line)
        raise AssertionError("the worker logged a traceback:\n" + "\n".join(lines[first - 3 :]))


# -- 1. kill -9 mid-run --------------------------------------------------------------------


def test_kill_9_during_1000_acks_late_tasks_reruns_only_what_was_held(
    shared: Stores, reliable: Any, start_reliable: Callable[..., WorkerProcess]
) -> None:
    """1,000 acks_late tasks (every 50th runs 1 s); worker A is killed with SIGKILL after a
    few hundred ended; worker B finishes the rest. Every task succeeds, and only the tasks
    A still held (unacked) when it died may run twice: nothing A acknowledged runs again."""
    total = 1000
    seconds = [1.0 if i % 50 == 0 else 0.005 for i in range(total)]
    ids = [reliable.work.apply_async((s,)).id for s in seconds]
    assert shared.waiting() == total

    a = start_reliable("-c", "50", "-n", "A@reliability")
    wait_until(lambda: shared.ended() >= 300, 30, "300 tasks to end on worker A")
    a.kill()
    assert a.proc.returncode == -signal.SIGKILL
    # Nothing touches the broker now: what A held is exactly what it had not acknowledged.
    held_at_kill = set(shared.held())
    waiting_at_kill = shared.waiting()
    events_at_kill = shared.events()
    started_by_a = {e["id"] for e in events_at_kill if e["kind"] == "start"}
    ended_by_a = {e["id"] for e in events_at_kill if e["kind"] == "end"}
    assert len(ended_by_a) >= 300
    assert len(ended_by_a) < total, "A ran everything before the kill: nothing was tested"
    assert held_at_kill, "A held nothing when killed"
    assert held_at_kill <= set(ids)
    assert len(held_at_kill) <= 50 * 4, "A held more than its prefetch window"
    assert len(held_at_kill) + waiting_at_kill + len(ended_by_a - held_at_kill) == total
    interrupted = (started_by_a - ended_by_a) & held_at_kill
    assert interrupted, "the kill interrupted no running task"
    assert started_by_a - ended_by_a <= held_at_kill, "a running task was not held"

    b = start_reliable("-c", "50", "-n", "B@reliability")
    shared.wait_all_succeeded(ids, timeout=40)
    assert_clean_stop(b)
    shared.assert_broker_empty()

    events = shared.events()
    assert all(e["pid"] in (a.proc.pid, b.proc.pid) for e in events)
    starts = runs(events, "start")
    ends = runs(events, "end")
    assert set(starts) == set(ids), "some task never ran"
    assert all(ends[task_id] for task_id in ids), "some task never ended"
    twice = {task_id for task_id, s in starts.items() if len(s) > 1}
    assert all(len(s) <= 2 for s in starts.values()), "a task ran three times or more"
    assert twice <= held_at_kill, f"ran again though acknowledged: {sorted(twice - held_at_kill)}"
    for task_id in ids:
        by_b = [e for e in starts[task_id] if e["pid"] == b.proc.pid]
        if task_id in held_at_kill:
            assert len(by_b) == 1, f"{task_id} was held by A but B ran it {len(by_b)}x"
        else:
            assert len(starts[task_id]) == 1, f"{task_id} ran {len(starts[task_id])}x"
    # Everything A held but had not started still ran once, on B; what A had started ran twice.
    assert interrupted <= twice
    finished_unacked = (ended_by_a & held_at_kill) - interrupted
    print(
        f"\nA ended {len(ended_by_a)} task(s) before the kill; A held {len(held_at_kill)} "
        f"({len(interrupted)} running, {len(finished_unacked)} ended but not yet acked); "
        f"{waiting_at_kill} waiting; {len(twice)} task(s) ran twice"
    )


# -- 2. beyond the visibility timeout, two workers -----------------------------------------


def test_eta_three_times_the_visibility_timeout_runs_once_with_two_workers(
    shared: Stores, reliable: Any, start_reliable: Callable[..., WorkerProcess]
) -> None:
    """Countdown 6 s with a 2 s visibility timeout and two consuming workers: each task is
    parked (not held) until its ETA, then runs exactly once, not before its ETA."""
    countdown = 3 * VISIBILITY_TIMEOUT
    w1 = start_reliable("-c", "10", "-n", "one@reliability")
    w2 = start_reliable("-c", "10", "-n", "two@reliability")
    sent = time.time()
    ids = [reliable.work.apply_async((0.0,), countdown=countdown).id for _ in range(3)]

    # Parked: kept in unacked, scored eta - visibility_timeout (not refreshed by a holder).
    def parked() -> bool:
        held = shared.held()
        if set(held) != set(ids):
            return False
        key = shared.prefix + kombu.UNACKED_INDEX
        for envelope in held.values():
            score = shared.broker.zscore(key, envelope["properties"]["delivery_tag"])
            if score is None or abs(score - (_eta(envelope) - VISIBILITY_TIMEOUT)) > 0.01:
                return False
        return True

    wait_until(parked, countdown - 1, "every ETA task to be parked until its ETA")
    assert not runs(shared.events()), "an ETA task ran early"

    shared.wait_all_succeeded(ids, timeout=countdown + 15)
    assert_clean_stop(w1)
    assert_clean_stop(w2)
    shared.assert_broker_empty()

    starts = runs(shared.events())
    assert sorted(starts) == sorted(ids)
    for task_id in ids:
        assert len(starts[task_id]) == 1, f"ETA task {task_id} ran {len(starts[task_id])}x"
        (run,) = starts[task_id]
        assert run["eta"] is not None and run["eta"] >= sent + countdown - 0.01
        assert run["at"] >= run["eta"], f"ran {run['eta'] - run['at']:.3f} s before its ETA"
        late = run["at"] - run["eta"]
        assert late < 1.5, f"ran {late:.3f} s after its ETA"
        assert run["pid"] in (w1.proc.pid, w2.proc.pid)


def _eta(envelope: dict[str, Any]) -> float:
    return datetime.fromisoformat(envelope["headers"]["eta"]).timestamp()


def test_task_three_times_the_visibility_timeout_runs_once_with_two_workers(
    shared: Stores, reliable: Any, start_reliable: Callable[..., WorkerProcess]
) -> None:
    """An acks_late task running 6 s with a 2 s visibility timeout while a second worker
    sweeps: its holder keeps it fresh, so it is never restored and runs exactly once."""
    duration = 3 * VISIBILITY_TIMEOUT
    holder = start_reliable("-c", "1", "--prefetch-multiplier", "1", "-n", "holder@reliability")
    task_id = reliable.work.apply_async((duration,)).id
    wait_until(lambda: _started(shared, task_id), 10, "the long task to start")
    other = start_reliable("-c", "10", "-n", "other@reliability")
    # The other worker consumes (and sweeps) while the long task runs: the holder, one slot
    # and a prefetch of one, has no room, so the quick tasks published now all go to it.
    quick = [reliable.work.apply_async((0.0,)).id for _ in range(20)]
    shared.wait_all_succeeded(quick, timeout=15)
    assert not _ended(shared, task_id), "the long task ended before the other worker ran"
    shared.wait_all_succeeded([task_id], timeout=duration + 15)
    assert_clean_stop(holder)
    assert_clean_stop(other)
    shared.assert_broker_empty()

    starts = runs(shared.events())
    assert len(starts[task_id]) == 1, f"the long task ran {len(starts[task_id])}x"
    assert starts[task_id][0]["pid"] == holder.proc.pid
    (end,) = runs(shared.events(), "end")[task_id]
    assert end["at"] - starts[task_id][0]["at"] >= duration
    assert all(len(starts[q]) == 1 for q in quick)
    assert all(starts[q][0]["pid"] == other.proc.pid for q in quick)


def _started(stores: Stores, task_id: str) -> bool:
    return task_id in runs(stores.events())


def _ended(stores: Stores, task_id: str) -> bool:
    return task_id in runs(stores.events(), "end")


# -- 3. Redis restarted under a running worker ---------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory, persist=True)
    server.start()
    yield server
    server.close()


def test_redis_restart_mid_run_loses_nothing(
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
    start_reliable: Callable[..., WorkerProcess],
) -> None:
    """300 tasks (50-100 ms each) on a private Redis that is stopped and started again while
    the worker runs them: the worker logs the outage and the recovery, never exits, and
    every task ends SUCCESS; only tasks in flight at the outage may run twice."""
    require_redis()  # the runs are recorded on the shared Redis, which stays up
    broker_url, backend_url = private_redis.url(0), private_redis.url(1)
    prefix = _use_stores(monkeypatch, broker_url, backend_url)
    stores = Stores(
        prefix,
        redis.Redis.from_url(broker_url),
        redis.Redis.from_url(backend_url),
        redis.Redis.from_url(redis_url(REDIS_DB_BROKER)),
    )
    try:
        _restart_mid_run(private_redis, stores, start_reliable)
    finally:
        stores.close()
        delete_prefixed(prefix, REDIS_DB_BROKER)


def _restart_mid_run(
    server: PrivateRedis, stores: Stores, start_reliable: Callable[..., WorkerProcess]
) -> None:
    import reliable

    reliable.configure_from_env()
    total = 300
    try:
        ids = [reliable.work.apply_async((0.05 + (i % 6) * 0.01,)).id for i in range(total)]
    finally:
        reliable.app.close()
    assert stores.waiting() == total

    worker = start_reliable("-c", "10")
    wait_until(lambda: stores.ended() >= 60, 30, "60 tasks to end before the outage")
    snapshot_at = time.time()
    held_before = set(stores.held())  # what may legitimately run twice, with what starts later
    assert server.stop() == 0, server.log()
    stopped_at = time.time()
    ended_at_stop = stores.ended()
    assert ended_at_stop < total, "the worker ran everything before Redis stopped"
    down = worker.wait_for(f"broker: Redis at {server.url(0)} is unreachable", timeout=15)
    # The tasks that were running end during the outage: their results wait for Redis.
    worker.wait_for(f"result backend: Redis at {server.url(1)} is unreachable", timeout=15)
    # The outage outlasts the visibility timeout, so that on return everything the worker
    # holds looks stale: it must refresh its own messages before a sweep restores (and so
    # reruns) them. (This holds the scenario for a while; it synchronises nothing.)
    wait_until(lambda: time.time() - stopped_at > 1.5 * VISIBILITY_TIMEOUT, 10, "a long outage")
    ended_in_outage = stores.ended() - ended_at_stop

    server.start()
    up_at = time.time()
    for client in (stores.broker, stores.results):
        client.connection_pool.disconnect()  # the old connections died with the server
    back = worker.wait_for(f"broker: Redis at {server.url(0)} is reachable again", timeout=20)
    stores.wait_all_succeeded(ids, timeout=40)
    assert worker.proc.poll() is None, "the worker exited:\n" + worker.log()
    assert_clean_stop(worker)
    try:
        stores.assert_broker_empty()
    except AssertionError:
        print(_leftovers(stores, held_before, snapshot_at) + "\nworker log:\n" + worker.log())
        raise

    starts = runs(stores.events())
    assert set(starts) == set(ids), "some task never ran"
    twice = {task_id for task_id, s in starts.items() if len(s) > 1}
    may_repeat = held_before | {i for i, s in starts.items() if s[0]["at"] >= snapshot_at}
    assert twice <= may_repeat, f"ran again though acknowledged: {sorted(twice - may_repeat)}"
    outage_lines = [line for line in worker.log().splitlines() if "Redis at" in line]
    print(
        f"\n{ended_at_stop} of {total} ended before Redis stopped, {ended_in_outage} during "
        f"the {up_at - stopped_at:.2f} s outage; {len(held_before)} held at the snapshot; "
        f"{len(twice)} task(s) ran twice ({sorted(twice)});\nworker: {down}\nworker: {back}\n"
        + "\n".join(outage_lines)
    )


def _leftovers(stores: Stores, held_before: set[str], snapshot_at: float) -> str:
    """What a broker that is not empty still has, to make a failure explain itself: each
    waiting message's task id, delivery tag and redelivered flag, how often it ran, and
    whether it was held at the snapshot; then the ``unacked`` entries' ids."""
    starts = runs(stores.events())
    lines = []
    for key in kombu.consume_keys([QUEUE]):
        for payload in stores.broker.lrange(stores.prefix + key, 0, -1):
            raw = json.loads(payload)
            task_id = raw.get("headers", {}).get("id")
            properties = raw.get("properties", {})
            info = properties.get("delivery_info", {})
            ran = starts.get(task_id, [])
            lines.append(
                f"  {key}: id={task_id} tag={properties.get('delivery_tag')}"
                f" redelivered={info.get('redelivered')} ran={len(ran)}x"
                f" first_start={'after' if ran and ran[0]['at'] >= snapshot_at else 'before'}"
                f"_snapshot held_before={task_id in held_before}"
            )
    held = sorted(stores.held())
    indexed = stores.broker.zcard(stores.prefix + kombu.UNACKED_INDEX)
    return (
        f"\n{len(lines)} message(s) waiting:\n"
        + "\n".join(lines)
        + f"\n{len(held)} in unacked ({indexed} indexed): {held}"
    )


# -- found on the way: the blocking pop at shutdown ----------------------------------------


def test_idle_worker_shutdown_wakes_its_blocking_pop_with_client_unblock(
    private_redis: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
    start_reliable: Callable[..., WorkerProcess],
) -> None:
    """An idle worker waits in BRPOP on a connection of its own; a graceful stop wakes it
    with CLIENT UNBLOCK (as the broker's design says), so a message BRPOP pops meanwhile is
    still recorded as held and given back, never dropped with the connection. Checked on a
    private Redis, whose command statistics only this test's clients touch."""
    _use_stores(monkeypatch, private_redis.url(0), private_redis.url(1))
    options = json.loads(os.environ["CELERIAC_TEST_TRANSPORT_OPTIONS"])
    monkeypatch.setenv(
        "CELERIAC_TEST_TRANSPORT_OPTIONS", json.dumps({**options, "brpop_timeout": 5})
    )
    admin = redis.Redis(port=private_redis.port)
    try:
        worker = start_reliable("-c", "4")

        def blocked() -> bool:
            return any(
                c.get("cmd") == "brpop" and "b" in c.get("flags", "") for c in admin.client_list()
            )

        wait_until(blocked, 10, "the idle worker to block in BRPOP")
        admin.config_resetstat()
        started = time.monotonic()
        assert_clean_stop(worker)
        assert time.monotonic() - started < 3, "the stop waited out the BRPOP timeout"
        stats = admin.info("commandstats")
        assert stats.get("cmdstat_client|unblock", {}).get("calls", 0) >= 1, (
            f"Redis never ran CLIENT UNBLOCK; commands run during the stop: {sorted(stats)}"
        )
    finally:
        admin.close()


# -- publishing while Redis is away --------------------------------------------------------


async def test_a_publish_to_a_redis_that_went_away_fails_with_an_error_naming_it(
    private_redis: PrivateRedis,
) -> None:
    """Once connected, ``delay()`` sends at once, without a task; when Redis has gone, the
    caller still gets the broker's error, whether or not the drop was noticed yet."""
    from celeriac import Celery
    from celeriac.errors import BrokerError

    app = Celery("gone", broker=private_redis.url(0), backend=private_redis.url(1))
    async with app.setup():
        await app.send_task("gone.noop")  # connected, and the queue bound
        assert private_redis.stop() == 0  # meanwhile this loop has not run: drop unnoticed
        with pytest.raises(BrokerError, match=r"Redis at .* is unreachable.*broker_url"):
            await app.send_task("gone.noop")
        with pytest.raises(BrokerError, match=r"Redis at .* is unreachable.*broker_url"):
            await app.send_task("gone.noop")  # the drop is known now: it reconnects, fails
