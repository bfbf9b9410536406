"""The worker drives Celery's canvas: chains, chords, callbacks and error callbacks continue
from the signature dicts each message carries, on memory:// (and SQLite for a chain and a
chord). Canvases are started with ``protocol.canvas.apply`` and ``canvas.publish``, as a
client (Celery's or ours) sends them: only the first step of a chain, a chord's header."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.canvas.publish import build, publish, send
from celeriac.protocol import canvas
from celeriac.protocol.canvas import signature
from celeriac.protocol.message import build_task_message
from celeriac.task import Request
from celeriac.worker.hooks import WorkerHook
from celeriac.worker.worker import Worker

TIMEOUT = 10


@pytest.fixture
async def app() -> AsyncIterator[Celery]:
    app = Celery("cv", broker=f"memory://{uuid.uuid4().hex}")
    register_tasks(app)
    async with app.setup():
        yield app


#: What the tasks saw, per test app (by its broker URL).
CALLS: dict[str, list[Any]] = {}


def calls_of(app: Celery) -> list[Any]:
    return CALLS.setdefault(str(app.conf.broker_url), [])


def register_tasks(app: Celery) -> None:
    calls = calls_of(app)

    @app.task(name="t.add")
    async def add(x: int, y: int) -> int:
        calls.append(("add", x, y))
        return x + y

    @app.task(name="t.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="t.tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="t.collect")
    async def collect(values: list[Any]) -> list[Any]:
        return values

    @app.task(name="t.boom")
    async def boom(*args: Any) -> None:
        raise ValueError("kaboom")

    @app.task(name="t.on_error")
    async def on_error(request: Request, exc: BaseException, tb: str | None) -> None:
        calls.append(("on_error", request.id, type(exc).__name__, str(exc), tb))

    @app.task(name="t.old_errback")
    def old_errback(task_id: str) -> str:
        calls.append(("old_errback", task_id))
        return task_id


def sig(name: str, *args: Any, task_id: str | None = None, **options: Any) -> dict[str, Any]:
    if task_id is not None:
        options["task_id"] = task_id
    immutable = options.pop("immutable", False)
    return signature(name, args, {}, options, immutable=immutable)


async def start(app: Celery, canvas_sig: dict[str, Any], *args: Any) -> canvas.Expansion:
    expansion = canvas.apply(canvas_sig, args)
    await publish(app, expansion)
    return expansion


@asynccontextmanager
async def worker_of(app: Celery, concurrency: int = 4) -> AsyncIterator[Worker]:
    worker = Worker(app, concurrency=concurrency)
    running = asyncio.get_running_loop().create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)


async def record(app: Celery, task_id: str) -> dict[str, Any]:
    return await (await app.connection()).backend.wait(task_id, TIMEOUT)


def chain_ids(node: canvas.ResultNode) -> list[str]:
    """A chain's step ids, first to last."""
    found = []
    current: canvas.ResultNode | None = node
    while current is not None:
        found.append(current.id)
        current = current.parent
    return found[::-1]


async def test_a_chain_of_three_runs_each_step_with_the_previous_result(app: Celery) -> None:
    chain = canvas.chain_dict([sig("t.add", 1, 2), sig("t.add", 10), sig("t.mul", 2)])
    expansion = await start(app, chain)
    assert len(expansion.calls) == 1  # only the first step is published
    first, second, third = chain_ids(expansion.result)
    async with worker_of(app):
        last = await record(app, third)
    assert last["status"] == states.SUCCESS and last["result"] == 26
    one, two = await record(app, first), await record(app, second)
    assert (one["result"], two["result"]) == (3, 13)
    assert one.get("parent_id") is None
    assert two["parent_id"] == first and last["parent_id"] == second
    assert one["children"] == [[[second, None], None]]
    assert two["children"] == [[[third, None], None]]
    assert last["children"] == []


async def test_an_immutable_step_ignores_the_previous_result(app: Celery) -> None:
    chain = canvas.chain_dict(
        [sig("t.add", 1, 2), sig("t.add", 5, 5, immutable=True), sig("t.mul", 2)]
    )
    expansion = await start(app, chain)
    async with worker_of(app):
        assert (await record(app, expansion.result.id))["result"] == 20


async def test_a_group_then_a_step_in_a_chain_is_a_chord(app: Celery) -> None:
    group = canvas.group_dict([sig("t.mul", 2), sig("t.mul", 3)])
    chain = canvas.chain_dict([sig("t.add", 1, 1), group, sig("t.tsum")])
    expansion = await start(app, chain)
    async with worker_of(app):
        assert (await record(app, expansion.result.id))["result"] == 10


async def test_a_chord_body_gets_the_values_in_index_order(app: Celery) -> None:
    second_done = asyncio.Event()

    @app.task(name="t.first")
    async def first() -> str:
        await asyncio.wait_for(second_done.wait(), TIMEOUT)  # ends last
        return "first"

    @app.task(name="t.second")
    async def second() -> str:
        second_done.set()
        return "second"

    chord = canvas.chord_dict(
        canvas.group_dict([sig("t.first"), sig("t.second")]), sig("t.collect")
    )
    expansion = await start(app, chord)
    assert len(expansion.chords) == 1
    async with worker_of(app):
        body = await record(app, expansion.result.id)
    assert body["status"] == states.SUCCESS and body["result"] == ["first", "second"]


async def test_a_failing_header_task_fails_the_body_with_a_chord_error(app: Celery) -> None:
    boom_id = str(uuid.uuid4())
    header = canvas.group_dict([sig("t.add", 1, 1), sig("t.boom", task_id=boom_id)])
    body = sig("t.collect", link_error=[sig("t.on_error")])
    expansion = await start(app, canvas.chord_dict(header, body))
    body_id = expansion.result.id
    async with worker_of(app):
        failed = await record(app, body_id)
    assert failed["status"] == states.FAILURE
    assert failed["result"] == {
        "exc_type": "ChordError",
        "exc_message": [f"Dependency {boom_id} raised ValueError('kaboom')"],
        "exc_module": "celery.exceptions",
    }
    calls = [c for c in calls_of(app) if c[0] == "on_error"]
    assert len(calls) == 1
    _, request_id, exc_type, message, _tb = calls[0]
    assert (request_id, exc_type) == (body_id, "ChordError")
    assert boom_id in message


async def test_a_failing_header_fails_each_task_of_a_group_body(app: Celery) -> None:
    """Celery's ``_handle_group_chord_error``: a chord whose body is a group fails every
    member of that group with the ChordError."""
    boom_id, first, second = (str(uuid.uuid4()) for _ in range(3))
    header = canvas.group_dict([sig("t.add", 1, 1), sig("t.boom", task_id=boom_id)])
    body = canvas.group_dict([sig("t.mul", 2, task_id=first), sig("t.mul", 3, task_id=second)])
    await start(app, canvas.chord_dict(header, body))
    async with worker_of(app):
        records = [await record(app, member) for member in (first, second)]
    for failed in records:
        assert failed["status"] == states.FAILURE
        assert failed["result"]["exc_type"] == "ChordError"
        assert boom_id in failed["result"]["exc_message"][0]


async def test_a_chord_whose_body_is_a_chain(app: Celery) -> None:
    header = canvas.group_dict([sig("t.add", 1, 1), sig("t.add", 2, 2)])
    body = canvas.chain_dict([sig("t.tsum"), sig("t.mul", 10)])
    expansion = await start(app, canvas.chord_dict(header, body))
    async with worker_of(app):
        assert (await record(app, expansion.result.id))["result"] == 60


async def test_one_callback_then_several_as_a_group(app: Celery) -> None:
    one = str(uuid.uuid4())
    expansion = await start(app, sig("t.add", 2, 2, link=[sig("t.mul", 10, task_id=one)]))
    parent = expansion.result.id
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    several = sig("t.add", 1, 1, link=[sig("t.mul", 3, task_id=a), sig("t.add", 5, task_id=b)])
    second = await start(app, several)
    async with worker_of(app):
        called = await record(app, one)
        ra, rb = await record(app, a), await record(app, b)
        assert called["result"] == 40 and called["parent_id"] == parent
        assert (await record(app, parent))["children"] == [[[one, None], None]]
        assert (ra["result"], rb["result"]) == (6, 7)
        assert ra["group_id"] == rb["group_id"] is not None
        children = (await record(app, second.result.id))["children"]
    assert children == [[[ra["group_id"], None], [[[a, None], None], [[b, None], None]]]]


async def test_error_callbacks_new_style_in_process_old_style_published(app: Celery) -> None:
    old = str(uuid.uuid4())
    errbacks = [sig("t.on_error"), sig("t.old_errback", task_id=old)]
    expansion = await start(app, sig("t.boom", 1, link_error=errbacks))
    failed_id = expansion.result.id
    async with worker_of(app):
        assert (await record(app, old))["result"] == failed_id
        assert (await record(app, failed_id))["status"] == states.FAILURE
    calls = calls_of(app)
    new_style = [c for c in calls if c[0] == "on_error"]
    assert len(new_style) == 1
    _, request_id, exc_type, message, tb = new_style[0]
    assert (request_id, exc_type, message) == (failed_id, "ValueError", "kaboom")
    assert "kaboom" in tb
    assert ("old_errback", failed_id) in calls


async def test_a_task_called_with_wrong_arguments_has_its_error_callbacks_called(
    app: Celery,
) -> None:
    """As in Celery, where the call raises TypeError in the worker: the message is refused
    (dead-lettered here) and the task's errbacks hear of the TypeError, both forms."""
    old = str(uuid.uuid4())
    errbacks = [sig("t.on_error"), sig("t.old_errback", task_id=old)]
    expansion = await start(app, sig("t.mul", 1, 2, 3, link_error=errbacks))
    failed_id = expansion.result.id
    async with worker_of(app):
        assert (await record(app, old))["result"] == failed_id
        assert (await record(app, failed_id))["status"] == states.FAILURE
    new_style = [c for c in calls_of(app) if c[0] == "on_error"]
    assert [c[1:3] for c in new_style] == [(failed_id, "TypeError")]
    assert "wrong arguments for t.mul" in new_style[0][3]
    assert "too many positional arguments" in new_style[0][3]
    assert await (await app.connection()).broker.dead_letter_count() == 1


async def test_a_failing_step_fails_the_rest_of_its_chain(app: Celery) -> None:
    chain = canvas.chain_dict([sig("t.add", 1, 1), sig("t.boom"), sig("t.mul", 2)])
    expansion = await start(app, chain)
    _, boom_id, last_id = chain_ids(expansion.result)
    async with worker_of(app):
        boom = await record(app, boom_id)
        last = await record(app, last_id)
    assert boom["status"] == last["status"] == states.FAILURE
    assert last["result"] == boom["result"]
    assert last["result"]["exc_message"] == ["kaboom"]


async def test_map_starmap_and_accumulate(app: Celery) -> None:
    xmap = await start(app, canvas.xmap_dict(sig("t.tsum"), [[1, 2], [3, 4]]))
    xstarmap = await start(app, canvas.xstarmap_dict(sig("t.add"), [[1, 2], [3, 4]]))
    picked = await start(app, signature("celery.accumulate", [[5, 6], 7], {"index": 1}))
    everything = await start(app, signature("celery.accumulate", [1, 2]))
    nothing = await start(app, signature("celery.backend_cleanup"))
    async with worker_of(app):
        assert (await record(app, xmap.result.id))["result"] == [3, 7]
        assert (await record(app, xstarmap.result.id))["result"] == [3, 7]
        assert (await record(app, picked.result.id))["result"] == 7
        assert (await record(app, everything.result.id))["result"] == [1, 2]
        cleaned = await record(app, nothing.result.id)
    assert cleaned["status"] == states.SUCCESS and cleaned["result"] is None


async def test_an_unregistered_step_fails_the_rest_of_its_chain(app: Celery) -> None:
    chain = canvas.chain_dict([sig("t.add", 1, 1), sig("t.nope"), sig("t.mul", 2)])
    expansion = await start(app, chain)
    _, nope_id, last_id = chain_ids(expansion.result)
    async with worker_of(app):
        last = await record(app, last_id)
        nope = await record(app, nope_id)
    assert nope["status"] == last["status"] == states.FAILURE
    assert last["result"]["exc_type"] == "NotRegistered"
    assert "'t.nope'" in last["result"]["exc_message"][0]
    broker = (await app.connection()).broker
    assert await broker.dead_letter_count() == 1


async def test_a_malformed_embed_is_dead_lettered_with_a_failure(app: Celery) -> None:
    task_id, later = str(uuid.uuid4()), str(uuid.uuid4())
    bad_chain = [{"task": "t.mul", "args": 2, "options": {"task_id": later}}]
    envelope = build_task_message("t.add", task_id, [1, 1], chain=bad_chain)
    conn = await app.connection()
    await conn.broker.publish(app.conf.task_default_queue, envelope)
    async with worker_of(app):
        failed = await record(app, task_id)
        also = await record(app, later)
    assert failed["status"] == also["status"] == states.FAILURE
    assert failed["result"]["exc_type"] == "CanvasError"
    assert "'args' must be a list" in failed["result"]["exc_message"][0]
    letters = await conn.broker.dead_letters()
    assert len(letters) == 1 and "malformed canvas" in letters[0].reason
    assert ("add", 1, 1) not in calls_of(app)  # the task did not run


async def test_a_malformed_later_step_is_found_when_it_becomes_the_next(app: Celery) -> None:
    """Only the next step is checked before a task runs (the rest goes on as it came): a bad
    step further on fails the step before it, which the worker that is to publish it finds,
    and the steps from there on get FAILURE; the steps before it ran."""
    first, second, bad = (str(uuid.uuid4()) for _ in range(3))
    chain = [
        {"task": "t.mul", "args": 2, "options": {"task_id": bad}},  # the last step: malformed
        sig("t.add", 10, task_id=second),
    ]
    envelope = build_task_message("t.add", first, [1, 1], chain=chain)
    conn = await app.connection()
    await conn.broker.publish(app.conf.task_default_queue, envelope)
    async with worker_of(app):
        ran = await record(app, first)
        failed = await record(app, second)
        also = await record(app, bad)
    assert ran["status"] == states.SUCCESS and ran["result"] == 2
    assert failed["status"] == also["status"] == states.FAILURE
    assert "'args' must be a list" in failed["result"]["exc_message"][0]
    letters = await conn.broker.dead_letters()
    assert len(letters) == 1 and "malformed canvas" in letters[0].reason


async def test_a_copy_of_a_finished_step_does_not_fork_the_chain(app: Celery) -> None:
    chain = canvas.chain_dict([sig("t.add", 1, 2), sig("t.add", 10), sig("t.add", 100)])
    expansion = await start(app, chain)
    first = expansion.calls[0]
    conn = await app.connection()
    async with worker_of(app, concurrency=1):
        assert (await record(app, expansion.result.id))["result"] == 113
        # The broker hands the first step over again (a redelivery, a duplicate publish).
        await publish(app, canvas.Expansion([first], [], expansion.result))
        sentinel = await start(app, sig("t.mul", 2, 3))
        assert (await record(app, sentinel.result.id))["result"] == 6
        assert sum((await conn.broker.queue_sizes()).values()) == 0
    adds = [c for c in calls_of(app) if c[0] == "add"]
    assert adds == [("add", 1, 2), ("add", 3, 10), ("add", 13, 100)]


async def test_a_chain_and_a_chord_on_sqlite(tmp_path: Path) -> None:
    app = Celery("sq", broker=f"sqlite:///{tmp_path}/x.db")
    register_tasks(app)
    async with app.setup():
        chain = await start(
            app, canvas.chain_dict([sig("t.add", 1, 2), sig("t.add", 10), sig("t.mul", 2)])
        )
        header = canvas.group_dict([sig("t.add", 1, 1), sig("t.add", 2, 2), sig("t.add", 3, 3)])
        chord = await start(app, canvas.chord_dict(header, sig("t.collect")))
        async with worker_of(app):
            assert (await record(app, chain.result.id))["result"] == 26
            assert (await record(app, chord.result.id))["result"] == [2, 4, 6]


async def test_chord_unlock_polls_the_header_then_publishes_the_body(app: Celery) -> None:
    gate = asyncio.Event()

    @app.task(name="t.gated")
    async def gated(x: int) -> int:
        await asyncio.wait_for(gate.wait(), TIMEOUT)
        return x

    header = canvas.group_dict([sig("t.add", 1, 1), sig("t.gated", 5)])
    expansion = canvas.apply(canvas.chord_dict(header, sig("t.collect")))
    unlock = canvas.chord_unlock_call(expansion.chords[0], countdown=0, interval=0.01)
    # As a Celery client on a store without a native join sends it: no chord size, so the
    # header's parts never complete the chord; celery.chord_unlock does.
    conn = await app.connection()
    await send(conn, build(app, [unlock, *expansion.calls]))
    async with worker_of(app):
        await record(app, expansion.calls[0].id)
        gate.set()
        body = await record(app, expansion.result.id)
    assert body["status"] == states.SUCCESS and body["result"] == [2, 5]
    polled = await conn.backend.get(unlock.id)  # its result is ignored, its retries stored
    assert polled is not None and polled["status"] == states.RETRY


async def test_chord_unlock_fails_the_body_when_a_header_task_failed(app: Celery) -> None:
    header = canvas.group_dict([sig("t.boom"), sig("t.add", 1, 1)])
    expansion = canvas.apply(canvas.chord_dict(header, sig("t.collect")))
    unlock = canvas.chord_unlock_call(expansion.chords[0], countdown=0, interval=0.01)
    conn = await app.connection()
    await send(conn, build(app, [*expansion.calls, unlock]))
    async with worker_of(app):
        body = await record(app, expansion.result.id)
    assert body["result"]["exc_type"] == "ChordError"
    assert body["result"]["exc_message"] == [
        f"Dependency {expansion.calls[0].id} raised ValueError('kaboom')"
    ]


async def test_an_expired_header_task_is_a_revoked_chord_part(app: Celery) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    header = canvas.group_dict([sig("t.add", 1, 1), sig("t.add", 2, 2, expires=past)])
    expansion = await start(app, canvas.chord_dict(header, sig("t.collect")))
    expired_id = expansion.calls[1].id
    async with worker_of(app):
        body = await record(app, expansion.result.id)
        assert (await record(app, expired_id))["status"] == states.REVOKED
    assert body["result"]["exc_message"] == [
        f"Dependency {expired_id} raised TaskRevokedError('expired')"
    ]


async def test_a_chord_part_on_a_store_without_joins_is_a_logged_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Celery("nj", broker=f"memory://{uuid.uuid4().hex}", backend="disabled://")
    register_tasks(app)
    ended = asyncio.Event()

    class Ended(WorkerHook):
        def task_ended(self, request: Request, state: str | None, runtime: float) -> None:
            ended.set()

    body = sig("t.collect", task_id=str(uuid.uuid4()), group_id="g1")
    envelope = build_task_message("t.add", str(uuid.uuid4()), [1, 1], group="g1", chord=body)
    async with app.setup():
        await (await app.connection()).broker.publish(app.conf.task_default_queue, envelope)
        worker = Worker(app, hooks=[Ended()])
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            await asyncio.wait_for(ended.wait(), TIMEOUT)
        finally:
            worker.stop()
            await asyncio.wait_for(running, TIMEOUT)
    assert ("add", 1, 1) in calls_of(app)  # the task ran
    assert any("cannot join chords" in r.getMessage() for r in caplog.records)


def test_chord_unlock_polls_later_and_later_up_to_a_cap() -> None:
    """celery.chord_unlock (a chord on a store without a native join) backs off: from its
    interval, half as long again each time, up to 10 s (or the interval, if longer)."""
    from celeriac.worker.builtins import chord_unlock_delay

    delays = [chord_unlock_delay(None, retries) for retries in range(12)]
    assert delays[:3] == [1.0, 1.5, 2.25]
    assert delays == sorted(delays)
    assert delays[-1] == 10.0
    assert chord_unlock_delay(0.5, 0) == 0.5
    assert chord_unlock_delay(30.0, 5) == 30.0  # an interval above the cap is kept
