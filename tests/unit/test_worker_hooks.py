"""The worker's hooks: each task's turning points in order, rejected and revoked deliveries,
the worker's start and stop; a hook that raises loses nothing; the registry of running
tasks is one of them."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celeriac import Celery
from celeriac.task import Request
from celeriac.transports.broker import Delivery
from celeriac.worker.hooks import Hooks, WorkerHook
from celeriac.worker.running import RunningRequests
from celeriac.worker.worker import Worker
from inprocess import memory_app


class Recorder(WorkerHook):
    """Every call, as (point, task id or None, detail)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, Any]] = []
        self.changed = asyncio.Event()

    def _add(self, point: str, task_id: str | None, detail: Any = None) -> None:
        self.calls.append((point, task_id, detail))
        self.changed.set()

    async def until(self, point: str, task_id: str | None, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not any(c[0] == point and c[1] == task_id for c in self.calls):
                self.changed.clear()
                await self.changed.wait()

    def of(self, task_id: str) -> list[str]:
        return [point for point, tid, _ in self.calls if tid == task_id]

    def worker_started(self, worker: Worker) -> None:
        self._add("worker_started", None)

    def worker_stopping(self, worker: Worker) -> None:
        self._add("worker_stopping", None)

    def task_received(self, request: Request) -> None:
        self._add("received", request.id)

    def task_started(self, request: Request) -> None:
        self._add("started", request.id)

    def task_succeeded(self, request: Request, value: Any, runtime: float) -> None:
        self._add("succeeded", request.id, value)

    def task_failed(self, request: Request, exc: BaseException, runtime: float) -> None:
        self._add("failed", request.id, type(exc).__name__)

    def task_retried(self, request: Request, exc: BaseException | None, eta: datetime) -> None:
        self._add("retried", request.id)

    def task_ended(self, request: Request, state: str | None, runtime: float) -> None:
        self._add(f"ended {state}", request.id)

    def task_rejected(self, delivery: Delivery, reason: str) -> None:
        self._add("rejected", delivery.envelope.headers.get("id"), reason)

    def task_revoked(self, request: Request, reason: str) -> None:
        self._add("revoked", request.id, reason)


class Broken(WorkerHook):
    def task_started(self, request: Request) -> None:
        raise RuntimeError("a broken extension")


def tasks(app: Celery) -> dict[str, Any]:
    @app.task(name="hooks.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="hooks.fail")
    async def fail() -> None:
        raise ValueError("no")

    @app.task(name="hooks.retry_once", bind=True, max_retries=1)
    async def retry_once(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "again"

    return {"add": add, "fail": fail, "retry_once": retry_once}


async def run(app: Celery, hooks: list[WorkerHook], work: Any) -> Worker:
    async with app.setup():
        worker = Worker(app, concurrency=10, hooks=hooks)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            await work(worker)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
    return worker


async def test_each_tasks_turning_points_in_order() -> None:
    app = memory_app("hooks")
    t = tasks(app)
    rec = Recorder()
    ids: dict[str, str] = {}

    async def work(worker: Worker) -> None:
        for name in ("add", "fail", "retry_once"):
            result = await (t[name].delay(1, 2) if name == "add" else t[name].delay())
            ids[name] = result.id
        unknown = await app.send_task("hooks.nowhere")
        ids["unknown"] = unknown.id
        expired = await t["add"].apply_async(
            (1, 1), expires=datetime.now(UTC) - timedelta(seconds=5)
        )
        ids["expired"] = expired.id
        await rec.until("ended SUCCESS", ids["add"])
        await rec.until("ended FAILURE", ids["fail"])
        await rec.until("ended SUCCESS", ids["retry_once"])
        await rec.until("rejected", ids["unknown"])
        await rec.until("revoked", ids["expired"])

    await run(app, [rec], work)
    assert rec.of(ids["add"]) == ["received", "started", "succeeded", "ended SUCCESS"]
    assert ("succeeded", ids["add"], 3) in rec.calls
    assert rec.of(ids["fail"]) == ["received", "started", "failed", "ended FAILURE"]
    assert ("failed", ids["fail"], "ValueError") in rec.calls
    assert rec.of(ids["retry_once"]) == [
        *("received", "started", "retried", "ended RETRY"),
        *("received", "started", "succeeded", "ended SUCCESS"),
    ]
    [(_, _, reason)] = [c for c in rec.calls if c[0] == "rejected"]
    assert "unregistered task 'hooks.nowhere'" in reason
    assert rec.of(ids["expired"]) == ["revoked"]
    points = [point for point, _, _ in rec.calls]
    assert points[0] == "worker_started" and points[-1] == "worker_stopping"
    assert points.count("worker_started") == points.count("worker_stopping") == 1


async def test_a_hook_that_raises_is_logged_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = memory_app("hooks")
    t = tasks(app)
    rec = Recorder()
    values: list[int] = []

    async def work(worker: Worker) -> None:
        result = await t["add"].delay(2, 2)
        values.append(await result.get(timeout=10))
        await rec.until("ended SUCCESS", result.id)

    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        await run(app, [Broken(), rec], work)
    assert values == [4]
    assert [r.getMessage() for r in caplog.records] == ["worker hook Broken.task_started failed"]
    assert "started" in [point for point, _, _ in rec.calls]  # the next hook still ran


async def test_the_registry_lists_what_runs_with_its_request() -> None:
    app = memory_app("hooks")
    release = asyncio.Event()
    begun = asyncio.Event()

    @app.task(name="hooks.wait")
    async def wait(label: str) -> str:
        begun.set()
        await release.wait()
        return label

    seen: list[dict[str, Any]] = []

    async def work(worker: Worker) -> None:
        result = await wait.delay("x")
        await asyncio.wait_for(begun.wait(), 10)
        seen.extend(running.as_celery() for running in worker.running.active())
        release.set()
        await result.get(timeout=10)
        assert len(worker.running) == 0

    await run(app, [], work)
    [active] = seen
    assert (active["name"], active["args"], active["kwargs"]) == ("hooks.wait", ["x"], {})
    assert active["hostname"].startswith("celeriac@") and active["time_start"] > 0


def test_a_point_no_hook_overrides_stays_the_base_classs_no_op() -> None:
    hooks = Hooks([Broken()])
    assert "task_succeeded" not in vars(hooks)  # nothing to call on each success
    assert "task_started" in vars(hooks)


async def test_a_task_cut_short_still_ends_and_leaves_the_registry() -> None:
    """Stopped at once mid-task: task_ended comes with no state, and nothing stays listed."""
    app = memory_app("hooks")
    begun = asyncio.Event()

    @app.task(name="hooks.forever")
    async def forever() -> None:
        begun.set()
        await asyncio.Event().wait()

    rec = Recorder()
    async with app.setup():
        worker = Worker(app, concurrency=10, hooks=[rec])
        running = asyncio.get_running_loop().create_task(worker.run())
        result = await forever.delay()
        await asyncio.wait_for(begun.wait(), 10)
        assert [r.request.id for r in worker.running.active()] == [result.id]
        worker.stop()
        worker.stop()  # at once: the running task is cancelled, its message requeued
        await asyncio.wait_for(running, 10)
    assert rec.of(result.id) == ["received", "started", "ended None"]
    assert len(worker.running) == 0


async def test_the_registry_drops_only_the_run_that_ended() -> None:
    """A task that replaced itself ends after its replacement (same id) has started here:
    the replacement stays listed until its own end."""
    registry = RunningRequests()
    replaced, replacement = Request(id="t1", task="a"), Request(id="t1", task="b")
    registry.task_started(replaced)
    registry.task_started(replacement)
    registry.task_ended(replaced, "IGNORED", 0.1)
    assert [running.request for running in registry.active()] == [replacement]
    registry.task_ended(replacement, "SUCCESS", 0.1)
    assert registry.active() == []


async def test_a_finished_requests_memory_is_freed_without_the_garbage_collector() -> None:
    """Nothing the worker attaches to a request refers back to it (a progress reporter
    holding its request once made every request cyclic garbage: memory and collector time
    grew with the tasks run)."""
    import gc

    app = memory_app("freed")

    @app.task(name="freed.add")
    async def add(x: int, y: int) -> int:
        return x + y

    def requests_alive() -> int:
        return sum(isinstance(o, Request) for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        async with app.setup():
            worker = Worker(app)
            running = asyncio.get_running_loop().create_task(worker.run())
            assert await (await add.delay(0, 0)).get(timeout=10) == 0  # warmed up
            before = requests_alive()
            for n in range(1, 21):
                assert await (await add.delay(n, n)).get(timeout=10) == 2 * n
            after = requests_alive()
            worker.stop()
            await asyncio.wait_for(running, 10)
    finally:
        gc.enable()
    assert after - before < 5, f"{after - before} requests of 20 tasks still alive"
