"""``send_many`` / ``apply_many`` / ``delay_many`` on memory:// (the brokers' own batching is
tested with each transport: tests/interop and tests/integration)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from celeriac import Celery, connections, sending
from celeriac.errors import BrokerError
from celeriac.transports.broker import PublishRequest
from inprocess import memory_app, run_worker


async def test_every_call_runs_with_its_own_arguments_in_the_calls_order() -> None:
    app = memory_app("many")

    @app.task
    async def add(x: int, y: int = 0) -> int:
        return x + y

    async def work() -> list[Any]:
        calls: list[Any] = [(i, i) for i in range(300)]
        calls += [[5], {"x": 1, "y": 2}]
        results = await add.delay_many(calls)
        assert len({r.id for r in results}) == len(calls)
        return [await r.get(timeout=10) for r in results]

    assert await run_worker(app, work) == [2 * i for i in range(300)] + [5, 3]


async def test_options_apply_to_every_message() -> None:
    app = memory_app("many-options")

    @app.task(bind=True)
    async def whoami(self: Any) -> list[Any]:
        return [self.request.delivery_info["routing_key"], self.request.root_id == self.request.id]

    async def work() -> list[Any]:
        results = await whoami.apply_many([(), ()], queue="other", priority=9)
        by_name = await app.send_many(whoami.name, [()], queue="other")
        return [await r.get(timeout=10) for r in [*results, *by_name]]

    async with app.setup():
        from celeriac.worker.worker import Worker

        worker = Worker(app, concurrency=5, queues=["other"])
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            answers = await work()
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
    assert [queue for queue, _ in answers] == ["other"] * 3
    assert all(own_root for _, own_root in answers)  # each top-level task is its own root


async def test_a_bad_call_raises_with_nothing_queued() -> None:
    app = memory_app("many-bad")

    @app.task
    async def echo(value: Any) -> Any:
        return value

    async with app.setup():
        with pytest.raises(TypeError, match=r"call 2 is a str.*write \('three',\)"):
            await echo.delay_many([(1,), {"value": 2}, "three"])
        with pytest.raises(TypeError, match="object cannot be serialized"):
            await echo.delay_many([(1,), (object(),)])
        conn = await app.connection()
        assert (await conn.broker.queue_sizes(["celery"])).get("celery", 0) == 0


async def test_a_broker_failing_midway_says_how_many_were_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = memory_app("many-failing")
    monkeypatch.setattr(connections, "SEND_MANY_CHUNK", 3)

    @app.task
    async def echo(value: Any) -> Any:
        return value

    async with app.setup():
        conn = await app.connection()
        publish_many = conn.broker.publish_many
        calls = 0

        async def failing_second_time(requests: Sequence[PublishRequest]) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise BrokerError("the broker went away")
            await publish_many(requests)

        monkeypatch.setattr(conn.broker, "publish_many", failing_second_time)
        with pytest.raises(BrokerError, match="went away") as raised:
            await echo.delay_many([(i,) for i in range(10)])
        # Chunks of three: the third was on its way when the second failed; the fourth
        # was never sent.
        assert raised.value.__notes__ == [
            "send_many queued 6 of these 10 tasks before this error (calls 0-2, 6-8, counting"
            " from 0); the rest were not sent"
        ]
        assert (await conn.broker.queue_sizes(["celery"]))["celery"] == 6
        assert calls == 3


async def test_sync_callers_get_the_list_once_queued() -> None:
    app = memory_app("many-sync")

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    def from_sync_code() -> list[Any]:
        results = mul.delay_many([(2, 3), (4, 5)])
        assert isinstance(results, list)
        return [r.get(timeout=10) for r in results]

    async def work() -> list[Any]:
        return await asyncio.to_thread(from_sync_code)

    assert await run_worker(app, work) == [6, 20]


async def test_a_batch_not_awaited_is_queued_anyway() -> None:
    """As with ``delay``: a forgotten ``await`` must not lose tasks (closing waits for it)."""
    app = memory_app("many-not-awaited")

    @app.task
    async def echo(value: Any) -> Any:
        return value

    async with app.setup():
        echo.delay_many([(1,), (2,)])
    async with app.setup():
        conn = await app.connection()
        assert (await conn.broker.queue_sizes(["celery"]))["celery"] == 2


def test_one_message_and_a_batch_show_their_arguments_as_celery_does() -> None:
    """``delay(2, 3)`` and ``delay_many([(2, 3)])`` build the same headers: Celery shows a
    tuple of arguments as a tuple (``argsrepr`` "(2, 3)"), a list as a list."""
    app = Celery("argsrepr", broker="memory://")
    plan = sending.plan(app.conf, "t")
    one = sending.build(plan, "id-1", (2, 3), None)
    many = sending.build_many(plan, ["id-1", "id-2"], [(2, 3), [4]])
    assert one.headers["argsrepr"] == many[0].headers["argsrepr"] == "(2, 3)"
    assert many[1].headers["argsrepr"] == "[4]"
    assert one.body == many[0].body
