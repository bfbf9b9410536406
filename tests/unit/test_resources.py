"""Worker resources on the in-memory broker: built once per process before the first task,
given to async and sync tasks as parameters, torn down once after the last one."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from celeriac import Celery, use
from celeriac.errors import ResourceError
from celeriac.worker.worker import Worker
from inprocess import memory_app, run_worker


class Pool:
    """Something costly to build: counts its builds and closes."""

    def __init__(self, events: list[str], name: str) -> None:
        self.name = name
        self.events = events
        self.thread = threading.get_ident()
        events.append(f"build {name}")

    def close(self) -> None:
        self.events.append(f"close {self.name}")


def new_app() -> Celery:
    return memory_app("resources")


async def test_each_resource_is_built_once_for_1000_tasks_and_torn_down_once() -> None:
    app = new_app()
    events: list[str] = []

    @app.resource
    async def db() -> AsyncIterator[Pool]:
        pool = Pool(events, "db")
        yield pool
        pool.close()

    @app.resource
    def model() -> Iterator[Pool]:  # sync generator: built and torn down in a thread
        pool = Pool(events, "model")
        yield pool
        pool.close()

    @app.resource
    async def settings() -> dict[str, int]:  # no teardown
        return {"scale": 3}

    @app.task
    async def on_loop(x: int, pool: Pool = use(db), conf: dict[str, int] = use(settings)) -> int:
        return id(pool) + 0 * x * conf["scale"]

    @app.task
    def in_thread(x: int, pool: Pool = use(model)) -> int:
        return id(pool) + 0 * x

    async def work() -> set[int]:
        results = [await on_loop.delay(i) for i in range(500)]
        results += [await in_thread.delay(i) for i in range(500)]
        return {await r.get(timeout=30) for r in results}

    seen = await run_worker(app, work)
    assert len(seen) == 2  # one db pool, one model, whatever task ran
    assert events == ["build db", "build model", "close model", "close db"]


async def test_a_sync_factory_does_not_run_on_the_event_loop() -> None:
    app = new_app()
    events: list[str] = []

    @app.resource
    def slow() -> Pool:
        return Pool(events, "slow")

    @app.task
    async def where(pool: Pool = use(slow)) -> bool:
        return pool.thread != threading.get_ident()

    async def work() -> bool:
        return bool(await (await where.delay()).get(timeout=10))

    assert await run_worker(app, work) is True


async def test_a_resource_that_fails_stops_the_worker_and_tears_down_the_others() -> None:
    app = new_app()
    events: list[str] = []

    @app.resource
    async def first() -> AsyncIterator[Pool]:
        pool = Pool(events, "first")
        yield pool
        pool.close()

    @app.resource
    async def broken() -> Pool:
        raise ConnectionRefusedError("smtp.example:25 refused")

    async with app.setup():
        with pytest.raises(ResourceError, match=r"'broken' failed to start.*smtp\.example:25"):
            await asyncio.wait_for(Worker(app).run(), 10)
    assert events == ["build first", "close first"]


async def test_a_task_called_inline_outside_a_worker_gets_a_clear_error_or_its_argument() -> None:
    app = new_app()

    @app.resource
    async def db() -> str:
        return "db"

    @app.task
    async def query(sql: str, conn: str = use(db)) -> str:
        return f"{conn}: {sql}"

    with pytest.raises(ResourceError, match=r"query uses the resource 'db'.*pass that parameter"):
        await query("select 1")
    assert await query("select 1", conn="fake") == "fake: select 1"
    # Not part of what a message may carry: the worker fills it in.
    assert "conn" not in query.call_signature.parameters


async def test_a_message_that_passes_an_injected_parameter_is_rejected() -> None:
    app = new_app()

    @app.resource
    async def db() -> str:
        return "db"

    @app.task(name="res.query")
    async def query(sql: str, conn: str = use(db)) -> str:
        return conn

    async def work() -> None:
        sent = await app.send_task("res.query", args=["x"], kwargs={"conn": "mine"})
        with pytest.raises(TypeError, match="unexpected keyword argument 'conn'"):
            await sent.get(timeout=10)

    await run_worker(app, work)


async def test_bound_tasks_get_resources_after_self() -> None:
    app = new_app()

    @app.resource
    async def db() -> str:
        return "db"

    @app.task(bind=True)
    async def whoami(self: Any, conn: str = use(db)) -> str:
        return f"{self.name} {conn}"

    async def work() -> str:
        return str(await (await whoami.delay()).get(timeout=10))

    assert (await run_worker(app, work)).endswith(" db")


async def test_aio_celery_app_context_still_works() -> None:
    app = new_app()
    events: list[str] = []

    @app.define_app_context
    @contextlib.asynccontextmanager
    async def setup_context() -> AsyncIterator[dict[str, Any]]:
        pool = Pool(events, "pool")
        yield {"pool": pool}
        pool.close()

    @app.task
    async def uses_context() -> str:
        pool: Pool = app.context["pool"]
        return pool.name

    async def work() -> list[str]:
        results = [await uses_context.delay() for _ in range(20)]
        return [await r.get(timeout=10) for r in results]

    assert await run_worker(app, work) == ["pool"] * 20
    assert events == ["build pool", "close pool"]
    with pytest.raises(ResourceError, match=r"app\.context is set only while a worker"):
        _ = app.context["pool"]


def test_two_resources_cannot_share_a_name() -> None:
    app = new_app()

    @app.resource
    def db() -> int:
        return 1

    def again() -> int:
        return 2

    again.__name__ = "db"
    with pytest.raises(ResourceError, match="'db' is already declared"):
        app.resource(again)
