"""A worker's events on memory://: worker-online, heartbeats, worker-offline always; task
events in Celery's order while they are enabled (setting or ``enable_events``), nothing of
tasks otherwise; a broker that refuses events never fails a task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import celeriac
from celeriac import Celery
from celeriac.errors import BrokerError
from celeriac.protocol import events
from celeriac.transports.broker import Subscription
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10
Event = dict[str, Any]


@pytest.fixture
def app() -> Celery:
    app = memory_app("ev")
    app.conf.worker_heartbeat_interval = 60.0  # tests that want heartbeats lower it

    @app.task(name="ev.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="ev.boom")
    async def boom() -> None:
        raise ValueError("kaboom")

    @app.task(name="ev.flaky", bind=True, max_retries=1, default_retry_delay=0)
    async def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("again"))
        return "ok"

    return app


class Events:
    """The events broadcast on the app's event exchange, as they arrive."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.seen: list[Event] = []
        #: Messages read (a task.multi batch is one).
        self.messages = 0

    async def until(self, done: Callable[[list[Event]], bool]) -> list[Event]:
        """Read events until ``done(seen)``; the events seen."""
        async with asyncio.timeout(TIMEOUT):
            while not done(self.seen):
                envelope = await anext(self.subscription)
                self.messages += 1
                self.seen.extend(events.parse(envelope))
        return self.seen

    async def of_type(self, type: str, count: int = 1) -> list[Event]:
        seen = await self.until(lambda seen: len(_typed(seen, type)) >= count)
        return _typed(seen, type)

    def tasks(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.seen if e.get("uuid") == task_id]


async def call(app: Celery, command: str) -> Any:
    """The one worker's reply to ``command``."""
    return await app.control.broadcast(command, reply=True, timeout=TIMEOUT, limit=1)


def _typed(seen: list[Event], type: str) -> list[Event]:
    return [event for event in seen if event["type"] == type]


@asynccontextmanager
async def running(app: Celery, name: str = "w@host") -> AsyncIterator[tuple[Worker, Events]]:
    """A worker running on ``app``, and the events heard from before it started."""
    async with app.setup():
        conn = await app.connection()
        exchange = app.conf.event_exchange
        async with conn.broker.subscribe(exchange, routing_key="#", kind="topic") as sub:
            worker = Worker(app, hostname=name, concurrency=4)
            run = asyncio.get_running_loop().create_task(worker.run())
            heard = Events(sub)
            try:
                await heard.of_type("worker-online")
                assert worker.mailbox is not None
                await asyncio.wait_for(worker.mailbox.ready.wait(), TIMEOUT)
                yield worker, heard
            finally:
                worker.stop()
                await asyncio.wait_for(run, TIMEOUT)


async def test_a_worker_says_it_is_online_and_offline_without_task_events(app: Celery) -> None:
    async with running(app) as (worker, heard):
        assert await app.send_task("ev.add", (1, 2)).get(timeout=TIMEOUT) == 3
        task_count = len(worker.events._pending)
    offline = await heard.of_type("worker-offline")
    online = heard.seen[0]
    assert online["type"] == "worker-online"
    assert task_count == 0
    assert [e["type"] for e in heard.seen] == ["worker-online", "worker-offline"]
    for event in (online, offline[0]):
        assert event["hostname"] == "w@host"
        assert event["sw_ident"] == "py-celeriac"
        assert event["sw_ver"] == celeriac.__version__
        assert event["freq"] == 60.0
        fields = events.FIELDS["worker-online"]
        common = ("hostname", "utcoffset", "pid", "clock")
        assert list(event) == [*common, *fields, "timestamp", "type"]
    assert offline[0]["processed"] == 1
    assert offline[0]["clock"] > online["clock"]


async def test_task_events_of_a_success_in_order(app: Celery) -> None:
    app.conf.worker_send_task_events = True
    async with running(app) as (_, heard):
        result = app.send_task("ev.add", (2, 3), {})
        assert await result.get(timeout=TIMEOUT) == 5
        await heard.until(lambda seen: "task-succeeded" in [e["type"] for e in seen])
    assert heard.tasks(result.id) == ["task-received", "task-started", "task-succeeded"]
    received, _, succeeded = [e for e in heard.seen if e.get("uuid") == result.id]
    assert received["name"] == "ev.add"
    assert (received["args"], received["kwargs"]) == ("(2, 3)", "{}")
    assert received["root_id"] == result.id and received["eta"] is None
    assert succeeded["result"] == "5" and isinstance(succeeded["runtime"], float)
    clocks = [e["clock"] for e in heard.seen]
    assert clocks == sorted(clocks)


async def test_task_events_of_a_failure(app: Celery) -> None:
    app.conf.worker_send_task_events = True
    async with running(app) as (_, heard):
        result = app.send_task("ev.boom")
        await heard.until(lambda seen: "task-failed" in [e["type"] for e in seen])
    assert heard.tasks(result.id) == ["task-received", "task-started", "task-failed"]
    failed = next(e for e in heard.seen if e["type"] == "task-failed")
    assert failed["exception"] == "ValueError('kaboom')"
    assert failed["traceback"].startswith("Traceback") and "kaboom" in failed["traceback"]


async def test_task_events_of_a_retry(app: Celery) -> None:
    app.conf.worker_send_task_events = True
    async with running(app) as (_, heard):
        result = app.send_task("ev.flaky")
        assert await result.get(timeout=TIMEOUT) == "ok"
        await heard.until(lambda seen: "task-succeeded" in [e["type"] for e in seen])
    assert heard.tasks(result.id) == [
        "task-received",
        "task-started",
        "task-retried",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    retried = next(e for e in heard.seen if e["type"] == "task-retried")
    assert retried["exception"] == "KeyError('again')"
    second = [e for e in heard.seen if e["type"] == "task-received"][1]
    assert second["retries"] == 1


async def test_enable_and_disable_events_by_remote_control(app: Celery) -> None:
    async with running(app) as (worker, heard):
        first = app.send_task("ev.add", (1, 1))
        await first.get(timeout=TIMEOUT)
        enabled = await call(app, "enable_events")
        again = await call(app, "enable_events")
        second = app.send_task("ev.add", (2, 2))
        await second.get(timeout=TIMEOUT)
        await heard.until(lambda seen: "task-succeeded" in [e["type"] for e in seen])
        disabled = await call(app, "disable_events")
        already = await call(app, "disable_events")
        third = app.send_task("ev.add", (3, 3))
        await third.get(timeout=TIMEOUT)
        assert worker.events.task_events is False
    await heard.of_type("worker-offline")
    assert enabled == [{"w@host": {"ok": "task events enabled"}}]
    assert again == [{"w@host": {"ok": "task events already enabled"}}]
    assert disabled == [{"w@host": {"ok": "task events disabled"}}]
    assert already == [{"w@host": {"ok": "task events already disabled"}}]
    assert heard.tasks(first.id) == []
    assert heard.tasks(second.id) == ["task-received", "task-started", "task-succeeded"]
    assert heard.tasks(third.id) == []


async def test_heartbeats_come_every_interval_and_on_request(app: Celery) -> None:
    app.conf.worker_heartbeat_interval = 0.05
    async with running(app) as (_, heard):
        beats = await heard.of_type("worker-heartbeat", 3)
        assert all(beat["freq"] == 0.05 for beat in beats)
        reply = await call(app, "heartbeat")
        requested = await heard.until(
            lambda seen: any(e.get("freq") == 5.0 for e in _typed(seen, "worker-heartbeat"))
        )
    assert reply == [{"w@host": None}]
    assert any(e.get("freq") == 5.0 for e in requested)
    stamps = [beat["timestamp"] for beat in beats]
    assert stamps[2] - stamps[0] >= 0.09


async def test_a_broker_refusing_events_fails_no_task(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.worker_send_task_events = True
    async with app.setup():
        conn = await app.connection()
        broadcast = conn.broker.broadcast
        refused = 0

        async def refusing(exchange: str, *args: Any, **kwargs: Any) -> None:
            nonlocal refused
            if exchange == app.conf.event_exchange:
                refused += 1
                raise BrokerError("events refused")  # a refusal; an outage the broker logs
            await broadcast(exchange, *args, **kwargs)

        conn.broker.broadcast = refusing  # type: ignore[method-assign]
        worker = Worker(app, hostname="w@host")
        run = asyncio.get_running_loop().create_task(worker.run())
        try:
            with caplog.at_level(logging.WARNING, logger="celeriac.worker"):
                results = [app.send_task("ev.add", (i, i)) for i in range(5)]
                assert [await r.get(timeout=TIMEOUT) for r in results] == [0, 2, 4, 6, 8]
                assert await app.send_task("ev.boom").get(timeout=TIMEOUT, propagate=False)
        finally:
            worker.stop()
            await asyncio.wait_for(run, TIMEOUT)
    assert refused >= 2
    assert worker.events.sent == 0 and worker.events.dropped > 0
    warnings = [r for r in caplog.records if "could not send events" in r.getMessage()]
    assert len(warnings) == 1


async def test_task_hooks_cost_nothing_when_task_events_are_off(app: Celery) -> None:
    async with running(app) as (worker, _):
        pending_before = list(worker.events._pending)
        clock_before = app.clock.value
        hooks = worker.events
        for _ in range(3):
            hooks.task_started(None)  # type: ignore[arg-type]  # never looked at
        assert worker.events._pending == pending_before
        assert app.clock.value == clock_before


async def test_a_busy_worker_sends_every_task_event_batched(app: Celery) -> None:
    app.conf.worker_send_task_events = True
    count = 300
    async with running(app) as (worker, heard):
        results = [app.send_task("ev.add", (i, 1)) for i in range(count)]
        for result in results:
            await result.get(timeout=TIMEOUT)
        await heard.until(lambda seen: len(_typed(seen, "task-succeeded")) == count)
        messages = heard.messages
    assert worker.events.dropped == 0
    assert len(_typed(heard.seen, "task-received")) == count
    assert messages < 3 * count  # several events per message


async def test_progress_of_streaming_and_update_state_tasks_is_sent(app: Celery) -> None:
    """A value a streaming task yields, and a state a task stores for itself with
    ``update_state``, go out as ``task-progress`` events (Celery's custom-event form:
    the progress's keys as fields), between started and succeeded."""

    @app.task(name="ev.stream")
    async def stream(n: int) -> Any:
        for i in range(1, n + 1):
            yield {"current": i, "total": n}

    @app.task(name="ev.report", bind=True)
    def report(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"current": 1, "total": 2, "uuid": "x"})
        return "done"

    app.conf.worker_send_task_events = True
    async with running(app) as (_, heard):
        streamed = await app.tasks["ev.stream"].delay(2)
        reported = await app.tasks["ev.report"].delay()
        assert await reported.get(timeout=TIMEOUT) == "done"
        await streamed.get(timeout=TIMEOUT)
        await heard.until(lambda seen: len(_typed(seen, "task-succeeded")) == 2)
    assert heard.tasks(streamed.id) == [
        "task-received",
        "task-started",
        "task-progress",
        "task-progress",
        "task-succeeded",
    ]
    progress = [e for e in _typed(heard.seen, "task-progress") if e["uuid"] == streamed.id]
    assert [(e["current"], e["total"], e["state"]) for e in progress] == [
        (1, 2, "PROGRESS"),
        (2, 2, "PROGRESS"),
    ]
    (own,) = [e for e in _typed(heard.seen, "task-progress") if e["uuid"] == reported.id]
    assert (own["current"], own["total"]) == (1, 2)  # its "uuid" key did not win
