"""Remote control on memory://: in-process workers answer ``app.control`` (and any Celery
client, whose messages these are: ``tests/unit/test_pidbox_protocol.py``) with Celery's
reply shapes; addressing, errors, casts, and the control commands that act."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from celeriac import Celery
from celeriac.protocol import pidbox
from celeriac.protocol.envelope import Envelope
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10


@pytest.fixture
def app() -> Celery:
    app = memory_app("rc")
    app.conf.broker_url = app.conf.broker_url.replace("memory://", "memory://user:secret@")
    app.conf.task_soft_time_limit = 30

    @app.task(name="rc.add", time_limit=20)
    async def add(x: int, y: int) -> int:
        return x + y

    return app


@asynccontextmanager
async def workers(app: Celery, *names: str, concurrency: int = 4) -> AsyncIterator[list[Worker]]:
    """Workers named ``names`` running on ``app``'s broker, each answering remote control."""
    async with app.setup():
        started = [Worker(app, hostname=name, concurrency=concurrency) for name in names]
        loop = asyncio.get_running_loop()
        runs = [loop.create_task(worker.run()) for worker in started]
        try:
            for worker in started:
                await listening(worker)
            yield started
        finally:
            for worker in started:
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*runs), TIMEOUT)


async def listening(worker: Worker) -> None:
    """Once ``worker`` answers remote control."""
    assert worker.mailbox is not None
    await asyncio.wait_for(worker.mailbox.ready.wait(), TIMEOUT)


async def test_ping_is_answered_by_every_worker(app: Celery) -> None:
    async with workers(app, "a@host", "b@host"):
        replies = await app.control.ping(timeout=0.5)
    assert sorted(replies or [], key=str) == [
        {"a@host": {"ok": "pong"}},
        {"b@host": {"ok": "pong"}},
    ]


async def test_a_destination_or_a_pattern_picks_the_workers(app: Celery) -> None:
    async with workers(app, "a@host", "b@host", "c@other"):
        named = await app.control.inspect(["b@host"]).ping()
        globbed = await app.control.inspect(pattern="*@host", matcher="glob", timeout=0.5).ping()
        searched = await app.control.inspect(pattern="^c", matcher="pcre", timeout=0.5).ping()
    assert named == {"b@host": {"ok": "pong"}}
    assert sorted(globbed or {}) == ["a@host", "b@host"]
    assert searched == {"c@other": {"ok": "pong"}}


async def test_no_worker_answers_none(app: Celery) -> None:
    async with app.setup():
        assert await app.control.inspect(timeout=0.2).ping() is None


async def test_active_reserved_and_query_task_describe_the_requests(app: Celery) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.task(name="rc.hold")
    async def hold(tag: str) -> str:
        started.set()
        await release.wait()
        return tag

    async with workers(app, "a@host", concurrency=1):
        first, second = await hold.delay("one"), await hold.delay("two")
        await asyncio.wait_for(started.wait(), TIMEOUT)  # the second waits for the slot
        inspect = app.control.inspect(["a@host"])
        active = (await inspect.active()) or {}
        safe = (await inspect.active(safe=True)) or {}
        found = (await inspect.query_task(first.id, second.id)) or {}
        release.set()
        assert await first.get(timeout=TIMEOUT) == "one"
    (running,) = active["a@host"]
    assert running["id"] == first.id and running["name"] == "rc.hold"
    assert running["args"] == ["one"] and running["kwargs"] == {}
    assert running["acknowledged"] is True and running["hostname"] == "a@host"
    assert isinstance(running["time_start"], float) and isinstance(running["worker_pid"], int)
    assert safe["a@host"][0]["args"] == "['one']"
    assert found["a@host"] == {first.id: ["active", running]}


async def test_stats_carry_what_flower_reads(app: Celery) -> None:
    async with workers(app, "a@host", concurrency=3):
        await (await app.tasks["rc.add"].delay(1, 2)).get(timeout=TIMEOUT)
        stats = ((await app.control.inspect(["a@host"]).stats()) or {})["a@host"]
    assert stats["total"] == {"rc.add": 1}
    assert stats["pool"]["max-concurrency"] == 3
    assert stats["broker"]["transport"] == "memory"
    assert "secret" not in repr(stats)
    assert isinstance(stats["clock"], str) and int(stats["clock"]) > 0
    assert stats["prefetch_count"] == 12 and stats["rusage"]["maxrss"] > 0


async def test_registered_lists_the_tasks_with_the_items_asked(app: Celery) -> None:
    async with workers(app, "a@host"):
        inspect = app.control.inspect(["a@host"])
        plain = ((await inspect.registered()) or {})["a@host"]
        items = ((await inspect.registered("time_limit")) or {})["a@host"]
    assert plain == ["rc.add"]  # sorted, celery.* built-ins left out
    assert items == ["rc.add [time_limit=20]"]


async def test_conf_hides_passwords_and_lists_changed_settings(app: Celery) -> None:
    async with workers(app, "a@host"):
        conf = ((await app.control.inspect(["a@host"]).conf()) or {})["a@host"]
    assert conf["task_soft_time_limit"] == 30
    assert "secret" not in conf["broker_url"] and "user:***@" in conf["broker_url"]
    assert "worker_concurrency" not in conf  # a default


async def test_an_unknown_command_gets_celerys_error_reply(app: Celery) -> None:
    async with workers(app, "a@host"):
        replies = await app.control.broadcast("no_such_cmd", reply=True, destination=["a@host"])
    assert replies == [{"a@host": {"error": "KeyError('no_such_cmd')"}}]


async def test_a_malformed_request_is_dropped_and_the_worker_goes_on(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    async with workers(app, "a@host"):
        broker = (await app.connection()).broker
        junk = Envelope(b"[not json", "application/json", "utf-8", {}, {})
        await broker.broadcast(pidbox.request_exchange(), junk, kind="fanout")
        assert await app.control.inspect(["a@host"]).ping() == {"a@host": {"ok": "pong"}}
    assert "dropped a remote-control request" in caplog.text


async def test_the_clock_moves_past_the_callers(app: Celery) -> None:
    async with workers(app, "a@host"):
        for _ in range(50):
            app.clock.forward()
        before = app.clock.value
        replies = await app.control.inspect(["a@host"]).clock()
    assert (replies or {})["a@host"]["clock"] > before
    assert app.clock.value > before


async def test_pool_grow_and_shrink_change_the_concurrency(app: Celery) -> None:
    async with workers(app, "a@host", concurrency=4) as (worker,):
        grown = await app.control.pool_grow(3, destination=["a@host"], reply=True)
        assert worker.concurrency == 7
        shrunk = await app.control.pool_shrink(10, destination=["a@host"], reply=True)
        assert worker.concurrency == 1
        await (await app.tasks["rc.add"].delay(2, 2)).get(timeout=TIMEOUT)  # one slot works
    assert grown == [{"a@host": {"ok": "pool will grow"}}]
    assert shrunk == [{"a@host": {"ok": "pool will shrink"}}]


async def test_time_limit_sets_the_tasks_limits(app: Celery) -> None:
    async with workers(app, "a@host"):
        replies = await app.control.time_limit(
            "rc.add", soft=5, hard=9, destination=["a@host"], reply=True
        )
        unknown = await app.control.time_limit("rc.nope", hard=1, reply=True, timeout=0.5)
    assert replies == [{"a@host": {"ok": "time limits set successfully"}}]
    task = app.tasks["rc.add"]
    assert (task.soft_time_limit, task.time_limit) == (5.0, 9.0)
    assert unknown == [{"a@host": {"error": "unknown task"}}]


async def test_shutdown_stops_the_worker_without_a_reply(app: Celery) -> None:
    async with app.setup():
        worker = Worker(app, hostname="a@host")
        running = asyncio.get_running_loop().create_task(worker.run())
        await listening(worker)
        replies = await app.control.broadcast("shutdown", reply=True, timeout=0.3)
        await asyncio.wait_for(running, TIMEOUT)
    assert replies == []


async def test_remote_control_can_be_switched_off(app: Celery) -> None:
    app.conf.worker_enable_remote_control = False
    async with app.setup():
        worker = Worker(app, hostname="a@host")
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            assert worker.mailbox is None
            assert await app.control.inspect(timeout=0.2).ping() is None
        finally:
            worker.stop()
            await asyncio.wait_for(running, TIMEOUT)


def test_the_sync_api_blocks_and_returns_the_same(app: Celery) -> None:
    replies: list[Any] = []

    async def serve() -> None:
        async with workers(app, "a@host"):
            await asyncio.to_thread(lambda: replies.append(app.control.ping(timeout=0.3)))

    asyncio.run(serve())
    assert replies == [[{"a@host": {"ok": "pong"}}]]


async def test_add_and_cancel_consumer_change_the_queues_consumed(app: Celery) -> None:
    async with workers(app, "a@host") as (worker,):
        extra = await app.tasks["rc.add"].apply_async((1, 1), queue="extra")
        added = await app.control.add_consumer("extra", destination=["a@host"], reply=True)
        assert await extra.get(timeout=TIMEOUT) == 2  # waiting there: now consumed
        again = await app.control.add_consumer("extra", destination=["a@host"], reply=True)
        queues = (await app.control.inspect(["a@host"]).active_queues() or {})["a@host"]
        assert [q["name"] for q in queues] == ["celery", "extra"]
        cancelled = await app.control.cancel_consumer("extra", destination=["a@host"], reply=True)
        assert worker.queues == ["celery"]
        left = await app.tasks["rc.add"].apply_async((2, 2), queue="extra")
        done = await app.tasks["rc.add"].apply_async((3, 3))
        assert await done.get(timeout=TIMEOUT) == 6  # the default queue still consumed
        broker = (await app.connection()).broker
        assert (await broker.queue_sizes(["extra"])).get("extra") == 1  # left alone
        assert await left.refresh() == "PENDING"
    assert added == [{"a@host": {"ok": "add consumer extra"}}]
    assert again == [{"a@host": {"ok": "already consuming from 'extra'"}}]
    assert cancelled == [{"a@host": {"ok": "no longer consuming from extra"}}]


async def test_a_celery_workers_greeting_gets_the_revoked_ids_and_shares_its_own(
    app: Celery,
) -> None:
    """Mingle: a Celery worker starting broadcasts ``hello`` with its revoked ids; a
    celeriac worker takes them and answers with every id it holds revoked, and its clock;
    to its own name it answers null, which mingle drops."""
    async with workers(app, "a@host") as (worker,):
        await app.control.revoke("kept-here", reply=True, timeout=0.5)
        replies = await app.control.broadcast(
            "hello",
            {"from_node": "celery@other", "revoked": ["from-celery"]},
            reply=True,
            destination=["a@host"],
        )
        own = await app.control.broadcast(
            "hello", {"from_node": "a@host", "revoked": []}, reply=True, destination=["a@host"]
        )
        assert worker.revokes.is_revoked("from-celery")
    ((_, value),) = (replies or [{}])[0].items()
    assert value["revoked"] == ["kept-here", "from-celery"]
    assert isinstance(value["clock"], int)
    assert own == [{"a@host": None}]
