"""Revokes on memory://: a revoked task is refused (REVOKED, its waiters woken) by the
workers running at the revoke, by a worker started later and by one restarted since (the
ids are kept in the result store); ``terminate`` stops runs in progress, async and sync;
Celery's replies, ``inspect revoked`` and stamped-header revokes."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.errors import TaskRevokedError
from celeriac.protocol.message import build_task_message
from celeriac.task import Request
from celeriac.worker.hooks import WorkerHook
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10


class Revoked(WorkerHook):
    """The (task id, reason) of each ``task_revoked``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def task_revoked(self, request: Request, reason: str) -> None:
        self.seen.append((request.id, reason))
        self.changed.set()

    async def wait_for(self, task_id: str) -> str:
        async with asyncio.timeout(TIMEOUT):
            while not any(seen[0] == task_id for seen in self.seen):
                self.changed.clear()
                await self.changed.wait()
        return next(reason for seen_id, reason in self.seen if seen_id == task_id)


@pytest.fixture
def app() -> Celery:
    app = memory_app("rv")

    @app.task(name="rv.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


@asynccontextmanager
async def worker_of(app: Celery, name: str = "a@host", **kw: Any) -> AsyncIterator[Worker]:
    worker = Worker(app, hostname=name, **kw)
    running = asyncio.get_running_loop().create_task(worker.run())
    try:
        assert worker.mailbox is not None
        await asyncio.wait_for(worker.mailbox.ready.wait(), TIMEOUT)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)


async def test_a_task_revoked_while_the_worker_runs_is_refused(app: Celery) -> None:
    seen = Revoked()
    async with app.setup(), worker_of(app, hooks=[seen]):
        task_id = str(uuid.uuid4())
        replies = await app.control.revoke(task_id, reply=True, timeout=0.5)
        result = await app.tasks["rv.add"].apply_async((1, 2), task_id=task_id)
        assert await seen.wait_for(task_id) == "revoked"
        with pytest.raises(TaskRevokedError, match="revoked"):
            await result.get(timeout=TIMEOUT)
        assert result.state == states.REVOKED
        revoked = await app.control.inspect(["a@host"]).revoked()
    assert replies == [{"a@host": {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
    assert revoked == {"a@host": [task_id]}


async def test_a_revoke_sent_before_any_worker_started_is_honoured(app: Celery) -> None:
    seen = Revoked()
    async with app.setup():
        task_id = str(uuid.uuid4())
        await app.control.revoke(task_id)  # nobody listens: kept in the result store
        result = await app.tasks["rv.add"].apply_async((1, 2), task_id=task_id)
        async with worker_of(app, hooks=[seen]):
            assert await seen.wait_for(task_id) == "revoked"
            with pytest.raises(TaskRevokedError):
                await result.get(timeout=TIMEOUT)


async def test_a_revoke_heard_before_a_restart_is_honoured_after_it(app: Celery) -> None:
    seen = Revoked()
    async with app.setup():
        task_id = str(uuid.uuid4())
        async with worker_of(app, name="first@host") as first:
            # A broadcast as a Celery client sends it: nothing recorded by the client.
            await app.control.broadcast("revoke", {"task_id": task_id}, reply=True, timeout=0.5)
            assert first.revokes.ids() == [task_id]
        result = await app.tasks["rv.add"].apply_async((1, 2), task_id=task_id)
        async with worker_of(app, name="second@host", hooks=[seen]):
            assert await seen.wait_for(task_id) == "revoked"
        assert await result.refresh() == states.REVOKED


async def test_revoke_stores_revoked_for_a_task_nobody_started(app: Celery) -> None:
    async with app.setup(), worker_of(app):
        waiting = await app.tasks["rv.add"].apply_async((1, 2), queue="nobody-reads-this")
        await app.control.revoke(waiting.id, reply=True, timeout=0.5)
        with pytest.raises(TaskRevokedError):
            await waiting.get(timeout=TIMEOUT)  # woken by the REVOKED record


async def test_terminate_cancels_a_running_async_task_at_once(app: Celery) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @app.task(name="rv.forever")
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    seen = Revoked()
    async with app.setup(), worker_of(app, hooks=[seen]) as worker:
        result = await forever.delay()
        await asyncio.wait_for(started.wait(), TIMEOUT)
        began = time.perf_counter()
        replies = await result.revoke(terminate=True)  # a cast: no reply awaited
        await asyncio.wait_for(cancelled.wait(), TIMEOUT)
        took = time.perf_counter() - began
        assert await seen.wait_for(result.id) == "terminated"
        with pytest.raises(TaskRevokedError, match="terminated"):
            await result.get(timeout=TIMEOUT)
        assert worker.running.active() == []
        # the worker goes on: the slot is free again
        assert await (await app.tasks["rv.add"].delay(2, 3)).get(timeout=TIMEOUT) == 5
    assert replies is None
    print(f"\nterminate reached the async task in {took * 1000:.1f} ms")
    assert took < 1.0


async def test_terminate_interrupts_a_running_sync_task(app: Celery) -> None:
    started, stopped = threading.Event(), threading.Event()

    @app.task(name="rv.spin")
    def spin() -> None:
        started.set()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            stopped.set()

    async with app.setup(), worker_of(app):
        result = await spin.delay()
        assert await asyncio.to_thread(started.wait, TIMEOUT)
        replies = await app.control.terminate(result.id, reply=True, timeout=0.5)
        with pytest.raises(TaskRevokedError, match="terminated"):
            await result.get(timeout=TIMEOUT)
        assert await asyncio.to_thread(stopped.wait, TIMEOUT)
    assert replies == [{"a@host": {"ok": f"terminate: {result.id}"}}]


async def test_terminate_of_a_task_not_running_here_says_so(app: Celery) -> None:
    async with app.setup(), worker_of(app):
        replies = await app.control.revoke("nope", terminate=True, reply=True, timeout=0.5)
    assert replies == [{"a@host": {"ok": "terminate: tasks unknown"}}]


async def test_revoke_by_stamped_headers_refuses_the_stamped_tasks(app: Celery) -> None:
    seen = Revoked()
    async with app.setup(), worker_of(app, hooks=[seen]):
        replies = await app.control.revoke_by_stamped_headers(
            {"batch": "b1"}, reply=True, timeout=0.5
        )
        stamped, other = await stamped_task(app, "b1", 1), await stamped_task(app, "b2", 2)
        assert await seen.wait_for(stamped) == "revoked"
        assert await app.AsyncResult(other).get(timeout=TIMEOUT) == 4
    assert replies == [
        {"a@host": {"ok": "headers {'batch': 'b1'} flagged as revoked, but not terminated"}}
    ]


async def stamped_task(app: Celery, batch: str, x: int) -> str:
    """Send ``rv.add(x, x)`` stamped ``batch=<batch>``, as Celery's stamping API does."""
    task_id = str(uuid.uuid4())
    envelope = build_task_message("rv.add", task_id, [x, x], {})
    envelope.headers.update(stamped_headers=["batch"], stamps={"batch": batch})
    await (await app.connection()).broker.publish(app.conf.task_default_queue, envelope)
    return task_id


def test_the_sync_api_revokes_too(app: Celery) -> None:
    task_id = str(uuid.uuid4())
    app.control.revoke(task_id)
    result = app.AsyncResult(task_id)
    result.revoke()

    async def kept() -> dict[str, float]:
        return await (await app.connection()).backend.revoked()

    assert task_id in asyncio.run(kept())
