"""ResultSet and GroupResult over real tasks (memory://, a worker in the test's loop), and
the result tuples that link results: parent, children, as_tuple, result_from_tuple."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from celeriac import Celery, GroupResult, ResultSet, _bridge, _state, states
from celeriac.errors import CeleriacError, SyncWaitInTaskError, TimeoutError
from celeriac.protocol.records import make_meta
from celeriac.result import AsyncResult, result_from_tuple
from celeriac.transports.backend import Meta
from celeriac.transports.memory.backend import MemoryBackend
from celeriac.worker.worker import Worker


@pytest.fixture
async def app() -> AsyncIterator[Celery]:
    app = Celery("groups", broker=f"memory://{uuid.uuid4().hex}")
    async with app.setup():
        yield app


async def run_worker(app: Celery) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, concurrency=8)
    return worker, asyncio.get_running_loop().create_task(worker.run())


async def stop(worker: Worker, running: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(running, 10)


class GroupStore(MemoryBackend):
    """The memory store, plus kept groups (JSON-encoded, as a real store keeps them)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.groups: dict[str, bytes] = {}

    async def save_group(self, group_id: str, meta: Meta, *, expires: float | None) -> None:
        self.groups[group_id] = json.dumps(meta).encode()

    async def restore_group(self, group_id: str) -> Meta | None:
        data = self.groups.get(group_id)
        return None if data is None else dict(json.loads(data))

    async def forget_group(self, group_id: str) -> None:
        self.groups.pop(group_id, None)


async def keep_groups(app: Celery) -> GroupStore:
    """Put a GroupStore in place of the app's memory store on this loop."""
    conn = await app.connection()
    store = GroupStore(conn.backend.url)
    await store.connect()
    await conn.backend.close()
    conn.backend = store
    return store


async def test_get_waits_for_every_task_and_keeps_their_order(app: Celery) -> None:
    release = asyncio.Event()

    @app.task(name="groups.square")
    async def square(x: int) -> int:
        if x == 3:
            await asyncio.wait_for(release.wait(), 10)
        return x * x

    worker, running = await run_worker(app)
    try:
        result_set = ResultSet([await square.delay(x) for x in range(5)])
        assert len(result_set) == 5 and result_set.app is app
        done = [r for r in result_set if r.id != result_set[3].id]
        for result in done:
            await result.get(timeout=10)
        assert await result_set.ready() is False
        assert await result_set.waiting() is True
        assert await result_set.completed_count() == 4
        assert await result_set.successful() is False
        release.set()
        assert await result_set.get(timeout=10) == [0, 1, 4, 9, 16]
        assert await result_set.join(timeout=10) == [0, 1, 4, 9, 16]
        assert await result_set.join_native(timeout=10) == [0, 1, 4, 9, 16]
        assert await result_set.ready() is True
        assert await result_set.waiting() is False
        assert await result_set.successful() is True
        assert await result_set.failed() is False
        assert await result_set.completed_count() == 5
        assert [r.state for r in result_set] == [states.SUCCESS] * 5  # read by ready()
        seen: list[tuple[str, Any]] = []
        assert await result_set.get(timeout=10, callback=lambda *a: seen.append(a)) == []
        assert seen == [(r.id, x * x) for x, r in enumerate(result_set)]
        await result_set.forget()
        assert [await r.refresh() for r in result_set] == [states.PENDING] * 5
    finally:
        await stop(worker, running)


async def test_a_failure_raises_unless_not_propagated(app: Celery) -> None:
    @app.task(name="groups.check")
    async def check(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x

    worker, running = await run_worker(app)
    try:
        result_set = ResultSet([await check.delay(x) for x in (1, -2, 3, -4)])
        with pytest.raises(ValueError, match="negative: -2"):  # the first in the set's order
            await result_set.get(timeout=10)
        values = await result_set.get(timeout=10, propagate=False)
        assert values[0::2] == [1, 3]
        assert [str(e) for e in values[1::2]] == ["negative: -2", "negative: -4"]
        assert all(isinstance(e, ValueError) for e in values[1::2])
        assert await result_set.failed() is True
        assert await result_set.successful() is False
        assert await result_set.ready() is True
        assert await result_set.completed_count() == 2
    finally:
        await stop(worker, running)


async def test_a_timeout_bounds_the_whole_wait(app: Celery) -> None:
    result_set = ResultSet([AsyncResult(uuid.uuid4().hex, app) for _ in range(3)])
    with pytest.raises(TimeoutError, match=r"was not ready after 0\.2 s"):
        await result_set.get(timeout=0.2)


async def test_as_completed_yields_in_finishing_order(app: Celery) -> None:
    gates = [asyncio.Event() for _ in range(4)]

    @app.task(name="groups.gated")
    async def gated(i: int) -> int:
        await asyncio.wait_for(gates[i].wait(), 10)
        if i == 1:
            raise RuntimeError("one fails")
        return i

    worker, running = await run_worker(app)
    try:
        result_set = ResultSet([await gated.delay(i) for i in range(4)])
        finished: list[int] = []
        gates[3].set()  # each task finishes only after the one after it was yielded
        async for result in result_set.as_completed(timeout=10):
            assert isinstance(result, AsyncResult)
            i = result_set.results.index(result)
            finished.append(i)
            if i == 1:
                assert result.state == states.FAILURE
                with pytest.raises(RuntimeError, match="one fails"):
                    await result.get()
            else:
                assert (result.state, result.result) == (states.SUCCESS, i)
            if i > 0:
                gates[i - 1].set()
        assert finished == [3, 2, 1, 0]
    finally:
        await stop(worker, running)


async def test_as_completed_raises_a_timeout_and_leaving_early_is_fine(app: Celery) -> None:
    @app.task(name="groups.quick")
    async def quick() -> str:
        return "quick"

    never = AsyncResult(uuid.uuid4().hex, app)
    worker, running = await run_worker(app)
    try:
        result_set = ResultSet([await quick.delay(), never])
        seen: list[AsyncResult[Any] | GroupResult] = []
        with pytest.raises(TimeoutError):
            async for result in result_set.as_completed(timeout=0.5):
                seen.append(result)
        assert seen == [result_set[0]]
        iterator = result_set.as_completed(timeout=10)
        async for result in iterator:
            assert result == result_set[0]
            break  # the wait for the other one is cancelled with the iterator
        await iterator.aclose()
    finally:
        await stop(worker, running)


def test_as_completed_is_for_async_code() -> None:
    app = Celery("groups-sync", broker=f"memory://{uuid.uuid4().hex}")
    with pytest.raises(CeleriacError, match=r"in sync code, call result_set\.get"):
        ResultSet([AsyncResult("a", app)]).as_completed()


def test_sync_code_blocks_with_the_same_names() -> None:
    app = Celery("groups-sync", broker=f"memory://{uuid.uuid4().hex}")

    @app.task(name="groups.add")
    async def add(x: int, y: int) -> int:
        return x + y

    result_set = ResultSet([add.delay(i, i) for i in range(3)], app=app)
    assert result_set.ready() is False
    assert result_set.completed_count() == 0

    async def serve() -> None:
        async with app.setup():
            worker, running = await run_worker(app)
            for result in result_set:
                await app.AsyncResult(result.id).get(timeout=10)
            await stop(worker, running)

    asyncio.run(serve())
    assert result_set.get(timeout=10) == [0, 2, 4]
    assert result_set.ready() is True
    assert result_set.successful() is True
    assert result_set.failed() is False
    assert result_set.completed_count() == 3
    group = GroupResult("g-sync", list(result_set), app=app)
    assert group.join(timeout=10) == [0, 2, 4]
    assert GroupResult("outer", [group, result_set[0]], app=app).get(timeout=10) == [
        [0, 2, 4],
        0,
    ]
    app.close()


def test_eager_results_are_read_without_a_store() -> None:
    app = Celery("groups-eager", broker=f"memory://{uuid.uuid4().hex}")

    @app.task(name="groups.half")
    def half(x: int) -> float:
        return x / 2

    result_set = ResultSet([half.apply((x,)) for x in (2, 4)], app=app)
    assert result_set.get() == [1.0, 2.0]
    assert result_set.ready() is True and result_set.completed_count() == 2


async def test_waiting_inside_a_task_refuses_unless_opted_out(app: Celery) -> None:
    result_set = ResultSet([AsyncResult("a", app)])
    token = _state.inside_task.set(True)
    try:
        with pytest.raises(SyncWaitInTaskError):
            result_set.get()
        with pytest.raises(SyncWaitInTaskError):
            result_set.as_completed()
        with pytest.raises(TimeoutError):
            await result_set.get(timeout=0.1, disable_sync_subtasks=False)
    finally:
        _state.inside_task.reset(token)


def test_members_are_added_and_removed_as_in_celery() -> None:
    app = Celery("groups-members", broker=f"memory://{uuid.uuid4().hex}")
    a, b, c = (AsyncResult(i, app) for i in "abc")
    result_set = ResultSet([a], app=app)
    result_set.add(b)
    result_set.add(AsyncResult("a", app))  # held already
    result_set.update([b, c])
    assert result_set.results == [a, b, c] and list(result_set) == [a, b, c]
    assert result_set[1] is b and result_set[1:] == [b, c]
    assert repr(result_set) == "<ResultSet: [a, b, c]>"
    result_set.remove("b")
    with pytest.raises(KeyError):
        result_set.remove(b)
    result_set.discard(b)
    result_set.discard(c)
    assert result_set == ResultSet([a])
    result_set.clear()
    assert len(result_set) == 0 and result_set.results == []


def test_as_tuple_and_result_from_tuple_round_trip_nested_groups() -> None:
    app = Celery("groups-tuples", broker=f"memory://{uuid.uuid4().hex}")
    first = AsyncResult("first", app)
    chained = AsyncResult("third", app, parent=AsyncResult("second", app, parent=first))
    assert chained.as_tuple() == (("third", (("second", (("first", None), None)), None)), None)
    inner = GroupResult("inner", [AsyncResult("b", app), AsyncResult("c", app)], parent=first)
    outer = GroupResult("outer", [AsyncResult("a", app), inner, chained], app=app)
    assert outer.as_tuple() == (
        ("outer", None),
        [
            (("a", None), None),
            (("inner", (("first", None), None)), [(("b", None), None), (("c", None), None)]),
            chained.as_tuple(),
        ],
    )
    assert repr(outer) == "<GroupResult: outer [a, inner, third]>"
    assert outer == "outer" and hash(outer) == hash("outer")

    stored = json.loads(json.dumps(outer.as_tuple()))  # a store hands back lists
    restored = result_from_tuple(stored, app)
    assert isinstance(restored, GroupResult)
    assert restored == outer and restored.as_tuple() == outer.as_tuple()
    restored_inner = restored[1]
    assert isinstance(restored_inner, GroupResult) and restored_inner.parent == first
    restored_chain = restored[2]
    assert restored_chain.parent is not None and restored_chain.parent.id == "second"
    assert restored_chain.parent.parent == first
    assert result_from_tuple([["x", None], None], app) == AsyncResult("x", app)
    assert result_from_tuple([["x", None], []], app) == GroupResult("x", [], app=app)
    assert result_from_tuple(["x", None], app) == AsyncResult("x", app)  # a bare id
    assert result_from_tuple(chained, app) is chained


async def test_children_are_read_from_the_record(app: Celery) -> None:
    child_group = GroupResult("g1", [AsyncResult("c2", app), AsyncResult("c3", app)])
    meta = make_meta("p1", states.SUCCESS, 1)
    meta["children"] = [AsyncResult("c1", app).as_tuple(), child_group.as_tuple()]
    backend = (await app.connection()).backend
    await backend.store("p1", meta, expires=None)
    await backend.store("p0", make_meta("p0", states.SUCCESS, 0), expires=None)

    parent = AsyncResult("p1", app)
    with pytest.raises(CeleriacError, match=r"await result\.refresh"):
        _ = parent.children
    await parent.refresh()
    assert parent.children == [AsyncResult("c1", app), child_group]
    no_children = AsyncResult("p0", app)
    await no_children.refresh()
    assert no_children.children == []


async def test_a_group_is_saved_restored_and_deleted(app: Celery) -> None:
    store = await keep_groups(app)

    @app.task(name="groups.echo")
    async def echo(x: int) -> int:
        return x

    worker, running = await run_worker(app)
    try:
        parent = AsyncResult("before", app)
        group = GroupResult(uuid.uuid4().hex, [await echo.delay(x) for x in (5, 6)], parent)
        assert await group.save() is group
        assert json.loads(store.groups[group.id]) == {
            "result": [[group.id, [["before", None], None]], [[[r.id, None], None] for r in group]]
        }
        restored = await GroupResult.restore(group.id, app=app)
        assert restored == group and restored is not group
        assert await restored.get(timeout=10) == [5, 6]
        await group.delete()
        assert await GroupResult.restore(group.id, app=app) is None
        await group.delete()  # twice is fine
    finally:
        await stop(worker, running)


def test_a_group_is_saved_and_restored_from_sync_code() -> None:
    app = Celery("groups-sync-save", broker=f"memory://{uuid.uuid4().hex}")
    _bridge.run(keep_groups(app))
    group = GroupResult("g-sync", [AsyncResult("a", app)], app=app)
    assert group.save() is group
    assert GroupResult.restore("g-sync", app=app) == group
    group.delete()
    assert GroupResult.restore("g-sync", app=app) is None
    app.close()
