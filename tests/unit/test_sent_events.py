"""``task-sent`` from clients (``task_send_sent_event``) on memory://: one event per task
published, after it, with Celery's fields; a batch as one ``task.multi``; none when off."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celeriac import Celery
from celeriac.protocol import events
from celeriac.transports.broker import Subscription
from inprocess import memory_app

TIMEOUT = 10


async def read(subscription: Subscription, count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` events and the routing keys' messages they came in (by the batch shape)."""
    seen: list[dict[str, Any]] = []
    shapes: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while len(seen) < count:
            envelope = await anext(subscription)
            parsed = events.parse(envelope)
            shapes.append("batch" if envelope.body.startswith(b"[") else "single")
            seen.extend(parsed)
    return seen, shapes


def app_with(sent: bool) -> Celery:
    app = memory_app("sent")
    app.conf.task_send_sent_event = sent
    return app


async def test_send_task_and_send_many_send_task_sent() -> None:
    app = app_with(True)
    async with app.setup():
        conn = await app.connection()
        async with conn.broker.subscribe("celeryev", kind="topic") as sub:
            one = await app.send_task("t.add", (2, 3), {"z": 1}, queue="q1", countdown=60)
            many = await app.send_many("t.add", [(1, 1), (2, 2)], queue="q2")
            seen, shapes = await read(sub, 3)
    assert shapes == ["single", "batch"]
    first = seen[0]
    assert list(first) == [
        "hostname", "utcoffset", "pid", "clock", *events.FIELDS["task-sent"], "timestamp", "type",
    ]  # fmt: skip
    assert first["type"] == "task-sent" and first["uuid"] == one.id
    assert (first["name"], first["args"], first["kwargs"]) == ("t.add", "(2, 3)", "{'z': 1}")
    assert (first["queue"], first["exchange"], first["routing_key"]) == ("q1", "", "q1")
    assert first["eta"] is not None and first["root_id"] == one.id
    assert first["hostname"] == f"gen{os.getpid()}@" + first["hostname"].split("@", 1)[1]
    assert [e["uuid"] for e in seen[1:]] == [r.id for r in many]
    assert [e["args"] for e in seen[1:]] == ["(1, 1)", "(2, 2)"]
    assert seen[1]["clock"] > first["clock"]


async def test_no_task_sent_when_off() -> None:
    app = app_with(False)
    async with app.setup():
        conn = await app.connection()
        assert conn.sent_events is None
        async with conn.broker.subscribe("celeryev", kind="topic") as sub:
            await app.send_task("t.add", (2, 3))
            await app.send_many("t.add", [(1, 1)])
            probe = events.build_envelope(events.event("probe", {}, hostname="x", clock=1), "x")
            await conn.broker.broadcast("celeryev", probe, "probe", kind="topic")
            seen, _ = await read(sub, 1)
    assert [e["type"] for e in seen] == ["probe"]
