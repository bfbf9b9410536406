"""The client side of events on memory://: the receiver (batches unpacked, clocks and
timestamps as Celery's receiver leaves them), the state of workers and tasks by Celery's
rules, and ``dump`` lines identical to ``celery events --dump``'s."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.events import EventReceiver, State, dump, top
from celeriac.events.dump import Dumper
from celeriac.events.top import render
from celeriac.protocol import events
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-events"


def captured(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    found = data.get("event") or data.get("body_decoded")
    assert isinstance(found, dict)
    return found


async def broadcast(app: Celery, payload: Any, routing_key: str) -> None:
    conn = await app.connection()
    envelope = events.build_envelope(payload, "w@host")
    await conn.broker.broadcast(app.conf.event_exchange, envelope, routing_key, kind="topic")


async def test_a_batch_comes_out_as_its_events_with_clock_and_local_time() -> None:
    app = memory_app("recv")
    batch = [
        events.event("task-started", {"uuid": "a"}, hostname="w@host", clock=40, offset=-2.0),
        events.event("task-started", {"uuid": "b"}, hostname="w@host", clock=41),
    ]
    async with app.setup(), EventReceiver(app) as receiver:
        await broadcast(app, batch, events.BATCH_ROUTING_KEY)
        async with asyncio.timeout(TIMEOUT):
            first, second = await anext(receiver), await anext(receiver)
    assert [first["uuid"], second["uuid"]] == ["a", "b"]
    assert app.clock.value > 41
    here = events.utcoffset()
    assert first["timestamp"] == pytest.approx(batch[0]["timestamp"] - (-2.0 - here) * 3600)
    assert second["timestamp"] == pytest.approx(batch[1]["timestamp"])
    assert first["local_received"] >= batch[1]["timestamp"] - 1


async def test_a_task_sent_takes_the_receivers_clock_as_celerys_receiver_does() -> None:
    app = memory_app("recv")
    app.clock.adjust(99)
    sent = events.event("task-sent", {"uuid": "a"}, hostname="client", clock=5000)
    async with app.setup(), EventReceiver(app) as receiver:
        await broadcast(app, sent, "task.sent")
        got = await asyncio.wait_for(anext(receiver), TIMEOUT)
    assert got["clock"] == 100 - 1


async def test_a_routing_key_picks_the_events() -> None:
    app = memory_app("recv")
    async with app.setup(), EventReceiver(app, "worker.#") as receiver:
        await broadcast(
            app, events.event("task-started", {"uuid": "a"}, hostname="w", clock=1), "task.started"
        )
        await broadcast(
            app, events.event("worker-heartbeat", {}, hostname="w", clock=2), "worker.heartbeat"
        )
        got = await asyncio.wait_for(anext(receiver), TIMEOUT)
    assert got["type"] == "worker-heartbeat"


async def test_the_receiver_hears_a_worker_and_its_tasks() -> None:
    app = memory_app("recv")
    app.conf.worker_send_task_events = True

    @app.task(name="recv.add")
    async def add(x: int, y: int) -> int:
        return x + y

    state = State()
    async with app.setup(), EventReceiver(app) as receiver:
        worker = Worker(app, hostname="w@host")
        run = asyncio.get_running_loop().create_task(worker.run())
        try:
            result = app.send_task("recv.add", (1, 2))
            async with asyncio.timeout(TIMEOUT):
                async for event in receiver:
                    state.event(event)
                    if state.tasks.get(result.id) and state.tasks[result.id].ready:
                        break
        finally:
            worker.stop()
            await asyncio.wait_for(run, TIMEOUT)
    task = state.tasks[result.id]
    assert (task.state, task.name, task.result, task.worker) == (
        "SUCCESS",
        "recv.add",
        "3",
        "w@host",
    )
    assert state.workers["w@host"].alive()
    assert state.workers["w@host"].sw_ident == "py-celeriac"


def test_a_worker_is_alive_within_twice_its_frequency() -> None:
    state = State()
    beat = captured("event-redis-worker-heartbeat.json") | {"local_received": 1000.0}
    state.event(beat)
    worker = state.workers["worker1@host"]
    assert worker.freq == 2.0 and worker.processed == 20
    assert worker.alive(now=1003.9) and not worker.alive(now=1004.1)
    quiet = {
        "type": "task-started",
        "uuid": "x",
        "hostname": "other@host",
        "local_received": 1000.0,
    }
    state.event(quiet)
    assert state.workers["other@host"].alive(now=1119) and not state.workers["other@host"].alive(
        now=1121
    )
    state.event(captured("event-redis-worker-offline.json"))
    assert "worker1@host" not in state.workers


def test_a_task_follows_its_events_and_a_late_one_does_not_set_it_back() -> None:
    state = State()
    for name in ("received", "started", "succeeded"):
        event = captured(f"event-redis-task-{name}.json") | {"uuid": "t1"}
        state.event(event)
    task = state.tasks["t1"]
    assert (task.state, task.name, task.args, task.result) == (
        "SUCCESS",
        "protoapp.add",
        "(2, 3)",
        "5",
    )
    state.event({"type": "task-started", "uuid": "t1", "hostname": "worker1@host", "clock": 1})
    assert state.tasks["t1"].state == "SUCCESS"
    failed = captured("event-amqp-task-failed.json")
    state.event(failed)
    assert state.tasks[failed["uuid"]].exception == "ValueError('kaboom')"


def test_a_running_tasks_progress_shows_in_the_table() -> None:
    state = State()
    base = {"uuid": "t2", "hostname": "w@h", "timestamp": 1.0}
    state.event(base | {"type": "task-received", "name": "tasks.resize", "clock": 1})
    state.event(base | {"type": "task-started", "clock": 2})
    state.event(base | {"type": "task-progress", "state": "PROGRESS", "current": 3, "total": 4})
    task = state.tasks["t2"]
    assert (task.state, task.progress) == ("PROGRESS", {"current": 3, "total": 4})
    assert "PROGRESS t2  tasks.resize    .. 3/4 (75%)" in render(state, now=1.5)


def test_tasks_kept_are_bounded() -> None:
    state = State(max_tasks=3)
    for n in range(5):
        state.event({"type": "task-started", "uuid": str(n), "hostname": "w"})
    assert list(state.tasks) == ["2", "3", "4"]


def test_dump_lines_are_celerys() -> None:
    from celery.events.dumper import Dumper as CeleryDumper  # type: ignore[import-untyped]

    names = [
        "event-redis-worker-online.json",
        "event-redis-task-received.json",
        "event-redis-task-started.json",
        "event-redis-task-succeeded.json",
        "event-redis-task-failed.json",
        "event-redis-task-sent.json",
        "event-redis-worker-heartbeat.json",
        "event-redis-worker-offline.json",
    ]
    shown = [captured(name) | {"local_received": 1.5} for name in names]
    out = io.StringIO()
    theirs = CeleryDumper(out=out)
    for event in shown:
        theirs.on_event(dict(event))
    ours = Dumper()
    assert "".join(ours.line(dict(event)) + "\n" for event in shown) == out.getvalue()


async def test_dump_prints_a_line_per_event_until_cancelled() -> None:
    app = memory_app("dump")
    out = io.StringIO()
    async with app.setup():
        dumping = asyncio.get_running_loop().create_task(dump(app, out))
        async with asyncio.timeout(TIMEOUT):
            while "started:" not in out.getvalue():
                await broadcast(app, captured("event-redis-worker-online.json"), "worker.online")
                await asyncio.sleep(0.01)
        dumping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dumping
    assert "worker1@host [" in out.getvalue()


async def test_top_draws_the_workers_and_their_tasks() -> None:
    state = State()
    state.event(captured("event-redis-worker-online.json") | {"local_received": 100.0})
    state.event(captured("event-redis-task-succeeded.json") | {"local_received": 100.0})
    text = render(state, now=101.0)
    assert "online  worker1@host" in text
    assert "SUCCESS" in text and "-> 5" in text
    assert "offline worker1@host" in render(state, now=1000.0)
    app = memory_app("top")
    out = io.StringIO()
    async with app.setup():
        showing = asyncio.get_running_loop().create_task(top(app, out, refresh=0.01))
        async with asyncio.timeout(TIMEOUT):
            while "worker1@host" not in out.getvalue():
                await broadcast(app, captured("event-redis-worker-online.json"), "worker.online")
                await asyncio.sleep(0.02)
        showing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await showing
