"""``self.replace(sig)`` in bound tasks, run by an in-process worker on memory://: the
replacement runs under the replaced task's id (a chain's last step, a group's
``celery.accumulate`` body), the replaced task stores nothing, and what followed it (the
rest of its chain, its callbacks, its place in a chord) follows the replacement. The
messages published equal those Celery 5.7 published for the same two canvases
(``tests/fixtures/celery-canvas/canvas-redis-replace-*.json``), ids compared by where they
first appear."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.canvas import group
from celeriac.canvas.publish import publish
from celeriac.errors import CeleriacError, Replace
from celeriac.protocol import canvas
from celeriac.protocol.canvas import signature
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.message import build_task_message
from celeriac.task import Request
from celeriac.transports.broker import PublishRequest
from celeriac.worker.hooks import WorkerHook
from celeriac.worker.worker import Worker

TIMEOUT = 10
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-canvas"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Ended(WorkerHook):
    """The state each task id ended in, as the worker's hooks see it."""

    def __init__(self) -> None:
        self.states: dict[str, list[str | None]] = {}
        self.changed = asyncio.Event()

    def task_ended(self, request: Request, state: str | None, runtime: float) -> None:
        self.states.setdefault(request.id, []).append(state)
        self.changed.set()

    async def wait_for(self, task_id: str, state: str) -> None:
        while state not in self.states.get(task_id, []):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT)


def make_app(name: str = "rapp") -> Celery:
    """Celery's test app's tasks (``rapp.*``), the replacing ones sync or async."""
    app = Celery(name, broker=f"memory://{uuid.uuid4().hex}")

    @app.task(name="rapp.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rapp.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="rapp.collect")
    async def collect(values: list[Any]) -> list[Any]:
        return values

    @app.task(name="rapp.boom")
    async def boom(*args: Any) -> None:
        raise ValueError("kaboom")

    @app.task(name="rapp.replace_with_chain", bind=True)
    def replace_with_chain(self: Any, x: int) -> int:
        return self.replace(add.s(x, 1) | mul.s(10))  # type: ignore[no-any-return]

    @app.task(name="rapp.replace_with_group", bind=True)
    async def replace_with_group(self: Any, n: int) -> list[int]:
        return self.replace(group(add.s(i, i) for i in range(n)))  # type: ignore[no-any-return]

    @app.task(name="rapp.swap_async", bind=True)
    async def swap_async(self: Any, x: int) -> int:
        try:
            self.replace(add.s(x, 100))
        except CeleriacError:  # a signal, not an error: it gets through
            return -1
        return -2

    @app.task(name="rapp.swap_sync", bind=True)
    def swap_sync(self: Any, x: int) -> int:
        return self.replace(add.s(x, 100))  # type: ignore[no-any-return]

    @app.task(name="rapp.swap_to_boom", bind=True)
    async def swap_to_boom(self: Any) -> None:
        self.replace(boom.s())

    return app


@pytest.fixture
async def app() -> AsyncIterator[Celery]:
    app = make_app()
    async with app.setup():
        yield app


def sig(name: str, *args: Any, task_id: str | None = None, **options: Any) -> dict[str, Any]:
    if task_id is not None:
        options["task_id"] = task_id
    return signature(f"rapp.{name}", args, {}, options)


async def start(app: Celery, canvas_sig: dict[str, Any], *args: Any) -> canvas.Expansion:
    expansion = canvas.apply(canvas_sig, args)
    await publish(app, expansion)
    return expansion


@asynccontextmanager
async def worker_of(app: Celery, *hooks: WorkerHook, concurrency: int = 4) -> AsyncIterator[Worker]:
    worker = Worker(app, concurrency=concurrency, hooks=list(hooks))
    running = asyncio.get_running_loop().create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(running, TIMEOUT)


async def record(app: Celery, task_id: str) -> dict[str, Any]:
    return await (await app.connection()).backend.wait(task_id, TIMEOUT)


# -- what runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_a_task_replaced_by_a_signature_has_its_result(app: Celery, is_async: bool) -> None:
    gate = asyncio.Event()

    @app.task(name="rapp.gated_add")
    async def gated_add(x: int, y: int) -> int:
        await asyncio.wait_for(gate.wait(), TIMEOUT)
        return x + y

    if is_async:

        @app.task(name="rapp.swap", bind=True)
        async def swap_async(self: Any, x: int) -> int:
            return self.replace(gated_add.s(x, 100))  # type: ignore[no-any-return]

    else:

        @app.task(name="rapp.swap", bind=True)
        def swap_sync(self: Any, x: int) -> int:
            return self.replace(gated_add.s(x, 100))  # type: ignore[no-any-return]

    ended = Ended()
    expansion = await start(app, sig("swap", 2))
    task_id = expansion.result.id
    backend = (await app.connection()).backend
    async with worker_of(app, ended):
        await ended.wait_for(task_id, "IGNORED")  # the replaced task ended, unstored
        assert await backend.get(task_id) is None
        gate.set()
        done = await record(app, task_id)
    assert done["status"] == states.SUCCESS and done["result"] == 102
    assert done["parent_id"] == task_id  # the replaced task published it
    assert ended.states[task_id] == ["IGNORED", states.SUCCESS]


async def test_replace_is_a_signal_that_except_celeriac_error_lets_through(app: Celery) -> None:
    assert issubclass(Replace, Exception) and not issubclass(Replace, CeleriacError)
    expansion = await start(app, sig("swap_async", 1))
    async with worker_of(app):
        assert (await record(app, expansion.result.id))["result"] == 101


async def test_replaced_by_a_chain_its_last_step_has_the_id(app: Celery) -> None:
    expansion = await start(app, sig("replace_with_chain", 4))
    task_id = expansion.result.id
    async with worker_of(app):
        last = await record(app, task_id)
        first = await record(app, last["parent_id"])
    assert last["status"] == states.SUCCESS and last["result"] == 50
    assert first["result"] == 5 and first["parent_id"] == task_id
    assert first["children"] == [[[task_id, None], None]]


async def test_replaced_by_a_group_its_result_is_the_list(app: Celery) -> None:
    expansion = await start(app, sig("replace_with_group", 3))
    task_id = expansion.result.id
    async with worker_of(app):
        done = await record(app, task_id)
        member = await record(app, done["parent_id"])  # the header task that ended last
    assert done["status"] == states.SUCCESS and done["result"] == [0, 2, 4]
    assert member["status"] == states.SUCCESS and member["group_id"] is not None
    assert member["parent_id"] == task_id


async def test_a_replaced_step_in_a_chain_is_followed_by_the_rest(app: Celery) -> None:
    chain = canvas.chain_dict([sig("add", 1, 1), sig("swap_sync"), sig("mul", 10)])
    expansion = await start(app, chain)
    steps: list[str] = []
    node: canvas.ResultNode | None = expansion.result
    while node is not None:
        steps.insert(0, node.id)
        node = node.parent
    _, swapped, last = steps
    async with worker_of(app):
        end = await record(app, last)
        replaced = await record(app, swapped)
    assert end["result"] == 1020 and end["parent_id"] == swapped
    assert replaced["result"] == 102 and replaced["parent_id"] == swapped


async def test_the_replaced_tasks_callback_gets_the_replacements_result(app: Celery) -> None:
    callback_id = str(uuid.uuid4())
    link = [sig("collect", task_id=callback_id)]
    expansion = await start(app, sig("replace_with_group", 2, link=link))
    async with worker_of(app):
        called = await record(app, callback_id)
        assert (await record(app, expansion.result.id))["result"] == [0, 2]
    assert called["result"] == [0, 2] and called["parent_id"] == expansion.result.id


async def test_the_replaced_tasks_errback_hears_of_the_replacements_failure(
    app: Celery,
) -> None:
    errback_id = str(uuid.uuid4())
    errback = sig("collect", task_id=errback_id)  # old-style: called with the failed id
    expansion = await start(app, sig("swap_to_boom", link_error=[errback]))
    task_id = expansion.result.id
    async with worker_of(app):
        failed = await record(app, task_id)
        called = await record(app, errback_id)
    assert failed["status"] == states.FAILURE and failed["result"]["exc_message"] == ["kaboom"]
    assert called["result"] == task_id


async def test_a_replaced_chord_header_task_counts_with_its_replacement(app: Celery) -> None:
    header = canvas.group_dict(
        [sig("add", 1, 1), sig("swap_async", 5), sig("replace_with_group", 2)]
    )
    expansion = await start(app, canvas.chord_dict(header, sig("collect")))
    async with worker_of(app):
        body = await record(app, expansion.result.id)
    assert body["status"] == states.SUCCESS and body["result"] == [2, 105, [0, 2]]


def test_applied_eagerly_the_replacement_runs_here() -> None:
    app = make_app("eager")

    def applied(name: str, *args: Any) -> Any:
        return app.tasks[name].apply(args).get()

    assert applied("rapp.swap_sync", 1) == 101
    assert applied("rapp.swap_async", 2) == 102
    assert applied("rapp.replace_with_chain", 4) == 50


async def test_a_replacement_that_cannot_be_applied_fails_the_task(app: Celery) -> None:
    @app.task(name="rapp.into_a_chord_part", bind=True)
    def into_a_chord_part(self: Any) -> None:
        self.replace(app.tasks["rapp.add"].s(1, 1).set(chord=sig("collect")))

    expansion = await start(app, sig("into_a_chord_part"))
    async with worker_of(app):
        failed = await record(app, expansion.result.id)
    assert failed["status"] == states.FAILURE
    assert failed["result"]["exc_type"] == "CanvasError"
    assert "must not be part of a chord" in failed["result"]["exc_message"][0]


# -- what is published, against Celery's -----------------------------------------------------


def _recorded(broker: Any) -> list[Envelope]:
    """Every envelope ``broker`` is asked to publish from now on, in order."""
    published: list[Envelope] = []
    publish_many = broker.publish_many

    async def recording(requests: Sequence[PublishRequest]) -> None:
        published.extend(request.envelope for request in requests)
        await publish_many(requests)

    broker.publish_many = recording
    return published


def _shape(messages: list[tuple[dict[str, Any], Any]]) -> list[Any]:
    """The messages' canvas headers and embeds, each id named by the order it first appears
    in; in signature dicts, options left unset dropped, and those only Celery's context
    writes: ``reply_to`` (the publishing process's reply queue: Celery's client's and
    worker's here, none on memory://), ``root_id`` and ``parent_id`` (a chain Celery
    applies with a root id writes it into each step; the headers carry both)."""
    names: dict[str, str] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, str) and UUID.match(value):
            return names.setdefault(value, f"id{len(names)}")
        if isinstance(value, list):
            return [walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        if "subtask_type" in value and isinstance(value.get("options"), dict):
            options = {
                key: item
                for key, item in value["options"].items()
                if item is not None and key not in ("reply_to", "root_id", "parent_id")
            }
            value = {**value, "options": options}
        return {key: walk(value[key]) for key in sorted(value)}

    kept = ("task", "id", "parent_id", "root_id", "group", "group_index", "replaced_task_nesting")
    return [walk([{key: headers[key] for key in kept}, body]) for headers, body in messages]


@pytest.mark.parametrize("scenario", ["replace-chain", "replace-group"])
async def test_the_messages_are_celerys(scenario: str) -> None:
    capture = json.loads((FIXTURES / f"canvas-redis-{scenario}.json").read_text())
    celerys = [(m["headers"], m["body_decoded"]) for m in capture["messages"]]
    first = capture["messages"][0]
    app = make_app()
    async with app.setup():
        conn = await app.connection()
        published = _recorded(conn.broker)
        envelope = build_task_message(
            first["headers"]["task"], first["headers"]["id"], first["body_decoded"][0]
        )
        await conn.broker.publish(app.conf.task_default_queue, envelope)
        async with worker_of(app, concurrency=1):
            await record(app, first["headers"]["id"])
        ours = [(e.headers, json.loads(e.body)) for e in published]
    assert len(ours) == len(celerys)
    assert _shape(ours) == _shape(celerys)


async def test_the_replacement_runs_while_the_replaced_run_is_still_settling(
    app: Celery,
) -> None:
    """The replacement takes the replaced task's id, one replacement level deeper: it is no
    copy of that task, so it runs even while the replaced run is still being settled here
    (its ack held back until the replacement has run), instead of waiting for it."""
    replaced_id = str(uuid.uuid4())
    replacement_ran = asyncio.Event()
    add = app.tasks["rapp.add"]

    @app.task(name="rapp.swap_late", bind=True, acks_late=True)
    def swap_late(self: Any, x: int) -> int:  # acknowledged after the replacement is out
        return self.replace(add.s(x, 100))  # type: ignore[no-any-return]

    class Watch(WorkerHook):
        def task_started(self, request: Request) -> None:
            if request.id == replaced_id and request.task == "rapp.add":
                replacement_ran.set()

    broker = (await app.connection()).broker
    ack = broker.ack

    async def ack_once_the_replacement_ran(delivery: Any) -> None:
        if delivery.envelope.headers.get("task") == "rapp.swap_late":
            await asyncio.wait_for(replacement_ran.wait(), TIMEOUT)
        await ack(delivery)

    broker.ack = ack_once_the_replacement_ran  # type: ignore[method-assign]
    last_id = str(uuid.uuid4())  # a step after it: the replacement carries the chain on
    line = canvas.chain_dict(
        [sig("swap_late", 1, task_id=replaced_id), sig("add", 5, task_id=last_id)]
    )
    await start(app, line)
    async with worker_of(app, Watch()):
        done, last = await record(app, replaced_id), await record(app, last_id)
    assert done["status"] == states.SUCCESS and done["result"] == 101
    assert last["result"] == 106
