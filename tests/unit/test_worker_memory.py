"""The worker's logic in one process on memory:// (fast; real processes are in integration/)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.errors import SyncWaitInTaskError, TimeLimitExceeded
from celeriac.worker.worker import Worker


@pytest.fixture
async def app() -> AsyncIterator[Celery]:
    app = Celery("mem", broker=f"memory://{uuid.uuid4().hex}")
    async with app.setup():
        yield app


async def run_worker(app: Celery, **options: Any) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, **options)
    task = asyncio.get_running_loop().create_task(worker.run())
    return worker, task


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 10)


async def test_async_and_sync_tasks_and_inline_calls(app: Celery) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    assert await add(1, 2) == 3
    assert mul(2, 3) == 6
    worker, running = await run_worker(app, concurrency=10)
    try:
        r1 = await add.delay(2, 2)
        r2 = await mul.delay(3, 3)
        assert await r1.get(timeout=5) == 4
        assert await r2.get(timeout=5) == 9
        assert r2.state == states.SUCCESS
    finally:
        await stop(worker, running)


async def test_sync_task_can_publish_through_the_workers_loop(app: Celery) -> None:
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    @app.task
    def fan_out(x: int) -> str:
        return double.delay(x).id

    worker, running = await run_worker(app)
    try:
        child_id = await (await fan_out.delay(21)).get(timeout=5)
        assert await app.AsyncResult(child_id).get(timeout=5) == 42
    finally:
        await stop(worker, running)


async def test_get_inside_a_task_refuses_unless_opted_out(app: Celery) -> None:
    @app.task
    async def child() -> str:
        return "child"

    @app.task
    async def parent(opt_out: bool) -> str:
        r = await child.delay()
        if opt_out:
            return str(await r.get(timeout=5, disable_sync_subtasks=False))
        try:
            await r.get(timeout=5)
        except SyncWaitInTaskError as exc:
            return "refused: " + str(exc)[:30]
        return "not refused"

    worker, running = await run_worker(app)
    try:
        refused = await (await parent.delay(False)).get(timeout=5)
        assert refused.startswith("refused: Never call result.get()")
        assert await (await parent.delay(True)).get(timeout=5) == "child"
    finally:
        await stop(worker, running)


async def test_concurrency_runs_async_tasks_together(app: Celery) -> None:
    gate = asyncio.Event()
    arrived = 0

    @app.task
    async def meet() -> int:
        nonlocal arrived
        arrived += 1
        if arrived == 20:
            gate.set()
        await asyncio.wait_for(gate.wait(), 5)
        return arrived

    worker, running = await run_worker(app, concurrency=20)
    try:
        results = [await meet.delay() for _ in range(20)]
        assert await asyncio.gather(*(r.get(timeout=10) for r in results)) == [20] * 20
    finally:
        await stop(worker, running)


async def test_concurrency_bounds_running_tasks(app: Celery) -> None:
    """Each slot is given back exactly once, so never more than ``concurrency`` tasks run."""
    running = peak = 0
    full = asyncio.Event()
    proceed = asyncio.Event()

    @app.task
    async def hold(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            full.set()
        await asyncio.wait_for(proceed.wait(), 5)
        running -= 1
        return i

    @app.task
    def fail() -> None:
        raise ValueError("a failed task gives its slot back too")

    worker, task = await run_worker(app, concurrency=3)
    try:
        failures = [await fail.delay() for _ in range(5)]
        results = [await hold.delay(i) for i in range(12)]
        await asyncio.wait_for(full.wait(), 5)
        proceed.set()
        assert await asyncio.gather(*(r.get(timeout=10) for r in results)) == list(range(12))
        for failure in failures:
            with pytest.raises(ValueError):
                await failure.get(timeout=10)
        assert peak == 3
    finally:
        await stop(worker, task)


async def test_time_limit_on_async_task(app: Celery) -> None:
    @app.task(time_limit=0.1)
    async def forever() -> None:
        await asyncio.Event().wait()

    worker, running = await run_worker(app)
    try:
        with pytest.raises(TimeLimitExceeded):
            await (await forever.delay()).get(timeout=5)
    finally:
        await stop(worker, running)


async def test_publish_errors_reach_the_caller(app: Celery) -> None:
    @app.task
    async def echo(value: Any) -> Any:
        return value

    with pytest.raises(TypeError):
        echo.delay(object())
    with pytest.raises(ValueError, match="priority 12 is out of range"):
        await echo.apply_async((1,), priority=12)


def test_sync_api_blocks_with_the_same_names() -> None:
    app = Celery("mem-sync", broker=f"memory://{uuid.uuid4().hex}")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(1, 1)
    assert r.state == states.PENDING
    assert r.ready() is False

    async def serve() -> int:
        async with app.setup():
            worker, running = await run_worker(app)
            result = await app.AsyncResult(r.id).get(timeout=5)
            await stop(worker, running)
            return int(result)

    assert asyncio.run(serve()) == 2
    assert r.get(timeout=5) == 2
    app.close()


async def test_acks_late_false_acknowledges_before_running(app: Celery) -> None:
    broker = (await app.connection()).broker
    seen: dict[str, int] = {}
    release, running_now = asyncio.Event(), asyncio.Event()

    @app.task(acks_late=False)
    async def early() -> None:
        seen["early"] = sum((await broker.queue_sizes()).values())
        running_now.set()
        await release.wait()

    @app.task
    async def late() -> None:
        seen["late"] = sum((await broker.queue_sizes()).values())
        running_now.set()
        await release.wait()

    worker, running = await run_worker(app)
    try:
        for task in (early, late):
            release.clear()
            running_now.clear()
            result = await task.delay()
            await asyncio.wait_for(running_now.wait(), 5)
            release.set()
            await result.get(timeout=5)
    finally:
        await stop(worker, running)
    # While running, the early-acked message is gone; the late-acked one is still held.
    assert seen == {"early": 0, "late": 1}


async def test_second_stop_requeues_running_tasks_at_once(app: Celery) -> None:
    started = asyncio.Event()

    @app.task
    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    worker, running = await run_worker(app, shutdown_timeout=60)
    await stuck.delay()
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    worker.stop()
    await asyncio.wait_for(running, 5)  # well under the 60 s graceful timeout
    async with app.setup():
        sizes = await (await app.connection()).broker.queue_sizes()
    assert sizes == {"celery": 1}


async def test_forget_deletes_the_record(app: Celery) -> None:
    @app.task
    async def one() -> int:
        return 1

    worker, running = await run_worker(app)
    try:
        r = await one.delay()
        assert await r.get(timeout=5) == 1
        await r.forget()
        assert await r.refresh() == states.PENDING
    finally:
        await stop(worker, running)


def test_shared_task_is_registered_on_every_app() -> None:
    from celeriac import shared_task

    before = Celery("before", broker="memory://shared-a")

    @shared_task(name="shared.ping")
    def ping() -> str:
        return "pong"

    after = Celery("after", broker="memory://shared-b")
    assert "shared.ping" in before.tasks
    assert "shared.ping" in after.tasks
    assert ping() == "pong"


async def test_ready_line_hides_the_brokers_password(caplog: pytest.LogCaptureFixture) -> None:
    """Broker URLs carry passwords (redis://:pw@host); the worker must not log them."""
    app = Celery("secret", broker=f"memory://user:s3cret@{uuid.uuid4().hex}")

    @app.task
    async def ping() -> str:
        return "pong"

    async with app.setup():
        with caplog.at_level("INFO", logger="celeriac.worker"):
            worker, task = await run_worker(app)
            assert await (await ping.delay()).get(timeout=10) == "pong"  # the worker is up
            await stop(worker, task)
    ready = [r.getMessage() for r in caplog.records if " ready: pid " in r.getMessage()]
    assert len(ready) == 1 and "user:***@" in ready[0] and "s3cret" not in ready[0]


async def test_a_stop_before_the_worker_runs_still_stops_it(app: Celery) -> None:
    """stop() called before run() has begun (a test that fails right after starting a
    worker, a supervisor's early signal) is not lost: run() returns at once."""
    worker = Worker(app)
    worker.stop()
    await asyncio.wait_for(worker.run(), 10)
