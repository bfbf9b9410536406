"""The ``rate_limit`` remote-control command (Celery's replies) and ``inspect registered``
showing each task's rate limit, on memory:// workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from celeriac import Celery
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10


@pytest.fixture
def app() -> Celery:
    app = memory_app("rl-control")
    app.conf.task_annotations = {"rl.annotated": {"rate_limit": "3/h"}}

    @app.task(name="rl.add", rate_limit="10/m")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rl.annotated")
    async def annotated() -> None: ...

    @app.task(name="rl.plain")
    async def plain() -> None: ...

    return app


@asynccontextmanager
async def worker(app: Celery) -> AsyncIterator[Worker]:
    async with app.setup():
        started = Worker(app, hostname="a@host")
        running = asyncio.get_running_loop().create_task(started.run())
        try:
            assert started.mailbox is not None
            await asyncio.wait_for(started.mailbox.ready.wait(), TIMEOUT)
            yield started
        finally:
            started.stop()
            await asyncio.wait_for(running, TIMEOUT)


async def rate_limit(app: Celery, task_name: str, value: Any) -> Any:
    """Celery's client call: ``app.control.rate_limit(name, rate, destination, reply=True)``."""
    replies = await app.control.rate_limit(task_name, value, ["a@host"], reply=True)
    return (replies or [{}])[0].get("a@host")


def own(names: list[str]) -> list[str]:
    """This module's tasks among ``names`` (a ``@shared_task`` of another test joins every app
    made after it)."""
    return [name for name in names if name.startswith("rl.")]


async def registered(app: Celery) -> list[str]:
    replies = await app.control.inspect(["a@host"]).registered("rate_limit")
    return own((replies or {})["a@host"])


async def test_a_new_limit_is_set_and_shown(app: Celery) -> None:
    async with worker(app) as running:
        before = await registered(app)
        reply = await rate_limit(app, "rl.plain", "5/s")
        after = await registered(app)
        limit = running.rate_limits.limit_of(app.tasks["rl.plain"])
    assert before == ["rl.add [rate_limit=10/m]", "rl.annotated [rate_limit=3/h]", "rl.plain"]
    assert reply == {"ok": "new rate limit set successfully"}
    assert after[-1] == "rl.plain [rate_limit=5/s]"
    assert limit is not None and limit.rate.interval == 0.2


@pytest.mark.parametrize("value", [0, None, "0"])
async def test_zero_or_none_takes_the_limit_off(app: Celery, value: Any) -> None:
    async with worker(app) as running:
        reply = await rate_limit(app, "rl.add", value)
        shown = await registered(app)
        limit = running.rate_limits.limit_of(app.tasks["rl.add"])
    assert reply == {"ok": "rate limit disabled successfully"}
    assert shown[0] == "rl.add" and limit is None


async def test_an_unknown_task_and_a_bad_rate_get_error_replies(app: Celery) -> None:
    async with worker(app) as running:
        unknown = await rate_limit(app, "rl.nope", "5/s")
        bad = await rate_limit(app, "rl.add", "5/fortnight")
        limit = running.rate_limits.limit_of(app.tasks["rl.add"])
    assert unknown == {"error": "unknown task"}
    assert bad["error"].startswith("Invalid rate limit string: bad rate limit '5/fortnight'")
    assert limit is not None and str(limit.rate) == "10/m"  # unchanged


async def test_the_limit_set_is_the_one_the_worker_enforces(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    deferred: asyncio.Queue[str] = asyncio.Queue()
    async with worker(app):
        broker = (await app.connection()).broker
        real_defer = broker.defer

        async def defer(delivery: Any, eta: float) -> None:
            await real_defer(delivery, eta)
            deferred.put_nowait(delivery.envelope.headers["id"])

        monkeypatch.setattr(broker, "defer", defer)
        limited = [await app.tasks["rl.add"].delay(n, 0) for n in range(2)]
        held_back = await asyncio.wait_for(deferred.get(), TIMEOUT)  # one start per 6 s
        assert await rate_limit(app, "rl.add", None) == {"ok": "rate limit disabled successfully"}
        free = [await app.tasks["rl.add"].delay(n, 0) for n in range(2, 6)]
        assert [await r.get(timeout=TIMEOUT) for r in free] == [2, 3, 4, 5]  # none deferred
        assert await rate_limit(app, "rl.plain", "1/h") == {"ok": "new rate limit set successfully"}
        plain = [await app.tasks["rl.plain"].delay() for _ in range(2)]
        plain_back = await asyncio.wait_for(deferred.get(), TIMEOUT)
    assert held_back in {r.id for r in limited}
    assert plain_back in {r.id for r in plain}
    assert deferred.empty()


async def test_registered_without_items_shows_celerys_default_items(app: Celery) -> None:
    async with worker(app):
        replies = await app.control.inspect(["a@host"]).registered()
    assert own((replies or {})["a@host"]) == [
        "rl.add [rate_limit=10/m]",
        "rl.annotated [rate_limit=3/h]",
        "rl.plain",
    ]
