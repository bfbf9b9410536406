"""The rate-limit gate in a worker on memory://, with a clock the test moves (the gate's and
the broker's): a limited task's extra messages go back to the broker, spaced, untouched;
other tasks keep running; each comes back and starts when its time comes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from celeriac import Celery
from celeriac.errors import BackendUnreachable, ConfigurationError
from celeriac.protocol import message as protocol
from celeriac.rates import parse_rate
from celeriac.transports.broker import Delivery
from celeriac.transports.disabled import DisabledBackend
from celeriac.transports.memory import broker as memory_broker
from celeriac.transports.memory.backend import MemoryBackend
from celeriac.worker import rate_limit_gate
from celeriac.worker.rate_limit_gate import RateGate
from celeriac.worker.rate_limits import RateLimits
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10


class Clock:
    """Wall-clock time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Deferrals:
    """Each ``defer`` the broker is asked for, as (task id, eta); ``until(n)`` waits for n."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.changed = asyncio.Event()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while len(self.calls) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(memory_broker, "now", clock)  # the broker's visibility follows it
    return clock


@pytest.fixture
def app() -> Celery:
    app = memory_app("rl-gate")
    app.conf.worker_prefetch_multiplier = 10
    app.started = []  # type: ignore[attr-defined]
    app.ran = asyncio.Event()  # type: ignore[attr-defined]

    @app.task(name="rl.limited", rate_limit="10/m")
    async def limited(n: int) -> int:
        app.started.append(n)  # type: ignore[attr-defined]
        app.ran.set()  # type: ignore[attr-defined]
        return n

    @app.task(name="rl.free")
    async def free(n: int) -> int:
        return n

    return app


@asynccontextmanager
async def worker_on(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch, concurrency: int = 4
) -> AsyncIterator[tuple[Worker, Deferrals]]:
    """A running worker whose gate reads ``clock``, and the deferrals its broker is asked."""
    async with app.setup():
        broker = (await app.connection()).broker
        deferrals = Deferrals()
        real_defer = broker.defer

        async def defer(delivery: Delivery, eta: float) -> None:
            await real_defer(delivery, eta)
            deferrals.calls.append((delivery.envelope.headers["id"], eta))
            deferrals.changed.set()

        monkeypatch.setattr(broker, "defer", defer)
        worker = Worker(app, hostname="rl@host", concurrency=concurrency)
        worker.rate_limits.clock = clock
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            yield worker, deferrals
        finally:
            worker.stop()
            await asyncio.wait_for(running, TIMEOUT)


def waiting(app: Celery) -> list[tuple[float, Any]]:
    """The messages the broker keeps invisible until a time, (time, envelope), soonest first."""
    transport = memory_broker._transport_for(app.conf.broker_url)
    with transport.lock:
        delayed = [] if (q := transport.queues.get("celery")) is None else list(q.delayed)
    return [(at, message.envelope) for at, _, message in sorted(delayed)]


def held(app: Celery) -> int:
    transport = memory_broker._transport_for(app.conf.broker_url)
    with transport.lock:
        return len(transport.held)


async def until_started(app: Celery, count: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while len(app.started) < count:  # type: ignore[attr-defined]
            app.ran.clear()  # type: ignore[attr-defined]
            await app.ran.wait()  # type: ignore[attr-defined]


async def test_extra_messages_go_back_to_the_broker_spaced_while_others_run(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with worker_on(app, clock, monkeypatch) as (worker, deferrals):
        limited = [await app.tasks["rl.limited"].delay(n) for n in range(5)]
        free = [await app.tasks["rl.free"].delay(n) for n in range(5)]
        assert [await r.get(timeout=TIMEOUT) for r in free] == list(range(5))
        await deferrals.until(4)
        await until_started(app, 1)
        assert app.started == [0]  # type: ignore[attr-defined]
        back = waiting(app)
        assert held(app) == 0  # nothing kept in the worker: every extra is in the broker
        assert worker.running.reserved() == [] and worker.running.active() == []
    etas = [at for at, _ in back]
    assert [round(at - clock.now, 6) for at in etas] == [6.0, 12.0, 18.0, 24.0]
    assert [envelope.headers["id"] for _, envelope in back] == [r.id for r in limited[1:]]
    expected = [(r.id, at) for r, at in zip(limited[1:], etas, strict=True)]
    assert sorted(deferrals.calls) == sorted(expected)


async def test_a_deferred_message_keeps_its_id_retries_and_body(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with worker_on(app, clock, monkeypatch) as (_, deferrals):
        broker = (await app.connection()).broker
        await app.tasks["rl.limited"].delay(0)
        envelope = protocol.build_task_message(
            "rl.limited", "retried-id", [1], {}, retries=3, root_id="root", parent_id="parent"
        )
        await broker.publish("celery", envelope)
        await deferrals.until(1)
    ((_, kept),) = waiting(app)
    assert kept.headers == envelope.headers
    assert kept.body == envelope.body and kept.properties == envelope.properties
    assert (kept.headers["id"], kept.headers["retries"]) == ("retried-id", 3)


async def test_each_comes_back_when_its_start_is_free(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with worker_on(app, clock, monkeypatch) as (_, deferrals):
        results = [await app.tasks["rl.limited"].delay(n) for n in range(4)]
        await deferrals.until(3)
        await until_started(app, 1)
        clock.now += 6.0  # the first deferred message is due, and so is the next start
        memory_broker._transport_for(app.conf.broker_url).wake()
        assert await results[1].get(timeout=TIMEOUT) == 1
        assert app.started == [0, 1]  # type: ignore[attr-defined]
        assert [round(at - clock.now, 6) for at, _ in waiting(app)] == [6.0, 12.0]
        clock.now += 12.0  # two due at once: one starts, the other waits its turn again
        memory_broker._transport_for(app.conf.broker_url).wake()
        await deferrals.until(4)
        await until_started(app, 3)
    assert app.started == [0, 1, 2]  # type: ignore[attr-defined]
    ((again, _),) = waiting(app)
    assert again - clock.now == pytest.approx(6.0)


async def test_a_limited_backlog_does_not_hold_the_only_slot(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with worker_on(app, clock, monkeypatch, concurrency=1) as (_, deferrals):
        for n in range(20):
            await app.tasks["rl.limited"].delay(n)
        free = await app.tasks["rl.free"].delay(7)
        assert await free.get(timeout=TIMEOUT) == 7
        await deferrals.until(19)
    assert len(app.started) == 1  # type: ignore[attr-defined]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(waiting(app))]
    assert gaps == pytest.approx([6.0] * 18)


async def test_a_start_due_within_milliseconds_waits_in_place(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    app.tasks["rl.limited"].options.rate_limit = "400/s"  # a start every 2.5 ms
    async with worker_on(app, clock, monkeypatch, concurrency=1) as (worker, deferrals):
        worker.rate_limits.sleep = sleep
        results = [await app.tasks["rl.limited"].delay(n) for n in range(3)]
        assert [await r.get(timeout=TIMEOUT) for r in results] == [0, 1, 2]
    assert deferrals.calls == []
    assert waits == pytest.approx([0.0025, 0.0025], abs=1e-6)


async def test_a_global_limit_needs_a_store_that_shares_it() -> None:
    app = Celery("rl-global", broker="memory://rl-global", backend="disabled")

    @app.task(name="rl.g", rate_limit="5/s", rate_limit_scope="global")
    def g() -> None: ...

    worker = Worker(app)
    with pytest.raises(ConfigurationError) as refused:
        await asyncio.wait_for(worker.run(), TIMEOUT)
    assert "task 'rl.g' has rate_limit_scope='global'" in str(refused.value)
    assert "set result_backend to a Redis or SQLite store" in str(refused.value)


# -- the global scope, through the store's acquire_rate ---------------------------------------


class Store(MemoryBackend):
    """A result store whose shared budget answers what the test says."""

    def __init__(self, *answers: float | Exception) -> None:
        super().__init__("memory://rl-gate-store")
        self.answers = list(answers)
        self.asked: list[tuple[str, int, float, int]] = []

    async def acquire_rate(self, key: str, limit: int, period: float, burst: int) -> float:
        self.asked.append((key, limit, period, burst))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Broker:
    def __init__(self) -> None:
        self.deferred: list[float] = []

    async def defer(self, delivery: Delivery, eta: float) -> None:
        self.deferred.append(eta)


def global_gate(app: Celery, store: Store, clock: Clock) -> tuple[RateGate, Broker]:
    limits = RateLimits(app)
    limits.clock = clock
    broker = Broker()
    return RateGate(limits, broker, store), broker  # type: ignore[arg-type]  # a fake broker


async def test_the_global_scope_starts_when_the_store_grants_and_defers_by_its_wait(
    app: Celery, clock: Clock
) -> None:
    task = app.tasks["rl.limited"]
    task.options.rate_limit_scope = "global"
    task.options.rate_limit_key = "api"
    store = Store(0.0, 2.5)
    gate, broker = global_gate(app, store, clock)
    delivery = Delivery(protocol.build_task_message("rl.limited", "x", [1], {}), "celery", 1)
    assert not await gate.deferred(task, "x", delivery)
    assert await gate.deferred(task, "x", delivery)
    assert broker.deferred == [clock.now + 2.5]
    assert store.asked == [("api", 10, 60.0, 10)] * 2


async def test_the_global_scope_waits_in_place_once_for_a_tiny_wait(
    app: Celery, clock: Clock
) -> None:
    task = app.tasks["rl.limited"]
    task.options.rate_limit_scope = "global"
    store = Store(0.002, 0.0, 0.001, 0.004)
    gate, broker = global_gate(app, store, clock)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    gate.limits.sleep = sleep
    delivery = Delivery(protocol.build_task_message("rl.limited", "x", [1], {}), "celery", 1)
    assert not await gate.deferred(task, "x", delivery)  # waited 2 ms, then granted
    assert await gate.deferred(task, "x", delivery)  # waited 1 ms, still not: deferred
    assert slept == [0.002, 0.001]
    assert broker.deferred == [clock.now + 0.004]


async def test_a_store_out_of_reach_defers_with_one_warning(
    app: Celery, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    task = app.tasks["rl.limited"]
    task.options.rate_limit_scope = "global"
    away = BackendUnreachable("store down")
    gate, broker = global_gate(app, Store(away, away, 0.0), clock)
    delivery = Delivery(protocol.build_task_message("rl.limited", "x", [1], {}), "celery", 1)
    assert await gate.deferred(task, "x", delivery)
    assert await gate.deferred(task, "x", delivery)
    assert not await gate.deferred(task, "x", delivery)
    delay = rate_limit_gate.STORE_OUTAGE_DELAY
    assert broker.deferred == [clock.now + delay] * 2
    lines = [r.getMessage() for r in caplog.records if r.name == "celeriac.worker"]
    assert len(lines) == 2 and "out of reach" in lines[0] and "answers" in lines[1]


def test_a_rate_limit_remote_control_set_is_in_force(app: Celery) -> None:
    limits = RateLimits(app)
    limits.set("rl.free", parse_rate("2/s"))
    limit = limits.limit_of(app.tasks["rl.free"])
    assert limit is not None and limit.rate.interval == 0.5


async def test_two_workers_share_one_global_budget_in_the_store(
    app: Celery, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = app.tasks["rl.limited"]
    task.options.rate_limit = "2/m"
    task.options.rate_limit_scope = "global"
    async with worker_on(app, clock, monkeypatch) as (_, deferrals):
        conn = await app.connection()
        conn.backend.clock = clock  # type: ignore[attr-defined]  # the store's clock too
        second = Worker(app, hostname="rl2@host", concurrency=4)
        second.rate_limits.clock = clock
        running = asyncio.get_running_loop().create_task(second.run())
        try:
            results = [await task.delay(n) for n in range(6)]
            await deferrals.until(4)
            await until_started(app, 2)  # the burst: two at once, whichever worker
            back = [round(at - clock.now, 6) for at, _ in waiting(app)]
            clock.now += 60.0  # the first two starts leave the window: one is due
            memory_broker._transport_for(app.conf.broker_url).wake()
            await until_started(app, 3)
            clock.now += 30.0
            memory_broker._transport_for(app.conf.broker_url).wake()
            await until_started(app, 4)
            started = list(app.started)  # type: ignore[attr-defined]
            ran = [await results[n].get(timeout=TIMEOUT) for n in started]
            waiting_ones = [r for n, r in enumerate(results) if n not in started]
            ready = [await r.ready() for r in waiting_ones]
        finally:
            second.stop()
            await asyncio.wait_for(running, TIMEOUT)
    assert back == [60.0, 90.0, 120.0, 150.0]  # one budget: retries spaced period/limit
    assert sorted(ran) == sorted(started) and len(started) == 4
    assert ready == [False, False]
    assert [round(at - clock.now, 6) for at, _ in waiting(app)] == [30.0, 60.0]


async def test_a_global_limit_on_a_store_that_cannot_share_it_is_kept_per_worker(
    app: Celery, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A global limit set by remote control on a task that had none when the start check
    ran: the worker enforces it alone rather than fail every delivery."""
    task = app.tasks["rl.free"]
    task.options.rate_limit_scope = "global"
    limits = RateLimits(app)
    limits.clock = clock
    limits.set("rl.free", parse_rate("1/s"))
    broker = Broker()
    disabled = DisabledBackend("disabled://")
    gate = RateGate(limits, broker, disabled)  # type: ignore[arg-type]  # a fake broker
    delivery = Delivery(protocol.build_task_message("rl.free", "x", [1], {}), "celery", 1)
    assert not await gate.deferred(task, "x", delivery)
    assert await gate.deferred(task, "x", delivery)
    assert await gate.deferred(task, "x", delivery)
    assert broker.deferred == [clock.now + 1.0, clock.now + 2.0]
    warned = [r.getMessage() for r in caplog.records if "cannot share it" in r.getMessage()]
    assert len(warned) == 1 and "'rl.free' is global" in warned[0]
