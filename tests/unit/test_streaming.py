"""Live progress on the in-memory broker: tasks that yield, update_state, and the caller's
``result.stream()`` in async and sync code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from celeriac import Celery, StreamingTask
from celeriac.result import Event
from inprocess import memory_app, run_worker


def new_app() -> Celery:
    return memory_app("streaming")


async def test_every_value_an_async_task_yields_reaches_the_caller_in_order() -> None:
    app = new_app()
    release = asyncio.Event()

    @app.task
    async def count(n: int) -> AsyncIterator[dict[str, int]]:
        for i in range(n):
            yield {"current": i + 1, "total": n}
            if i == 0:
                await release.wait()  # the caller sees the first event while the task runs

    assert isinstance(count, StreamingTask)

    async def work() -> list[Event]:
        result = await count.delay(50)
        events = []
        async for event in result.stream(timeout=10):
            events.append(event)
            release.set()
        return events

    events = await run_worker(app, work)
    assert [e.state for e in events] == ["PROGRESS"] * 50 + ["SUCCESS"]
    assert [e.info["current"] for e in events[:-1]] == list(range(1, 51))
    assert events[-1].info == {"current": 50, "total": 50}  # the last value yielded
    assert events[-1].ready and not events[0].ready


async def test_a_sync_generator_task_streams_from_its_thread_and_returns_its_result() -> None:
    app = new_app()

    @app.task
    def steps(n: int) -> Iterator[int]:
        yield from range(n)
        return "all done"  # type: ignore[misc]  # a generator's return value is the result

    async def work() -> list[Event]:
        result = await steps.delay(20)
        return [event async for event in result.stream(timeout=10)]

    events = await run_worker(app, work)
    assert [e.info for e in events[:-1]] == list(range(20))
    assert (events[-1].state, events[-1].info) == ("SUCCESS", "all done")


async def test_update_state_joins_the_stream_and_a_failure_raises_at_the_end() -> None:
    app = new_app()

    @app.task(bind=True)
    async def fails(self: Any) -> None:
        await self.update_state(state="PROGRESS", meta={"step": "download"})
        await self.update_state(state="PROGRESS", meta={"step": "parse"})
        raise ValueError("bad input on line 3")

    async def work() -> tuple[list[Any], list[Event]]:
        result = await fails.delay()
        seen: list[Any] = []
        with pytest.raises(ValueError, match="bad input on line 3"):
            async for event in result.stream(timeout=10):
                seen.append(event.info)
        again = await app.send_task(fails.name)
        quiet = [event async for event in again.stream(timeout=10, propagate=False)]
        return seen, quiet

    seen, quiet = await run_worker(app, work)
    assert seen == [{"step": "download"}, {"step": "parse"}]
    assert quiet[-1].state == "FAILURE" and isinstance(quiet[-1].info, ValueError)


async def test_a_late_caller_gets_the_latest_state_first_and_a_plain_task_its_result() -> None:
    app = new_app()
    reached, go_on = asyncio.Event(), asyncio.Event()

    @app.task
    async def slow() -> AsyncIterator[int]:
        for i in range(3):
            yield i
        reached.set()  # its third event is stored: resumed only after that
        await go_on.wait()
        yield 3

    @app.task
    async def plain(x: int) -> int:
        return x * 2

    async def work() -> tuple[list[Any], list[Any]]:
        result = await slow.delay()
        await asyncio.wait_for(reached.wait(), 10)  # attach only now, late
        stream = result.stream(timeout=10).__aiter__()
        first = await anext(stream)
        go_on.set()
        rest = [event async for event in stream]
        doubled = await plain.delay(21)
        return [first.info] + [e.info for e in rest], [
            (e.state, e.info) async for e in doubled.stream(timeout=10)
        ]

    late, plain_events = await run_worker(app, work)
    assert late == [2, 3, 3]  # latest state, the next event, then SUCCESS with the last value
    assert plain_events == [("SUCCESS", 42)]


async def test_sync_code_iterates_the_same_stream() -> None:
    app = new_app()

    go_on = asyncio.Event()

    @app.task
    async def count(n: int) -> AsyncIterator[int]:
        yield 0
        await go_on.wait()  # the rest only once the sync caller has the first event
        for i in range(1, n):
            yield i

    async def work() -> list[Any]:
        result = await count.delay(5)
        loop = asyncio.get_running_loop()
        infos: list[Any] = []

        def follow() -> None:  # a sync caller (a Flask view, say): a thread with no loop
            for event in result.stream(10):
                infos.append(event.info)
                loop.call_soon_threadsafe(go_on.set)

        thread = threading.Thread(target=follow)
        thread.start()
        await asyncio.to_thread(thread.join, 10)
        return infos

    assert await run_worker(app, work) == [0, 1, 2, 3, 4, 4]


async def test_a_value_that_cannot_be_stored_fails_the_task() -> None:
    app = new_app()

    @app.task
    async def odd() -> AsyncIterator[object]:
        yield object()

    async def work() -> None:
        result = await odd.delay()
        with pytest.raises(TypeError):
            await result.get(timeout=10)

    await run_worker(app, work)


def test_streaming_inside_a_task_is_refused() -> None:
    from celeriac._state import inside_task
    from celeriac.errors import SyncWaitInTaskError
    from celeriac.result import AsyncResult

    app = new_app()
    token = inside_task.set(True)
    try:
        with pytest.raises(SyncWaitInTaskError):
            AsyncResult("x", app).stream()
    finally:
        inside_task.reset(token)


async def test_sse_frames_carry_each_event_and_a_timeout_ends_the_stream() -> None:
    from celeriac.web.sse import sse_events

    app = new_app()

    @app.task
    async def two() -> AsyncIterator[dict[str, int]]:
        yield {"current": 1, "total": 2}
        yield {"current": 2, "total": 2}

    @app.task
    async def broken() -> None:
        raise KeyError("missing")

    async def work() -> tuple[list[bytes], list[bytes], list[bytes]]:
        ok = [frame async for frame in sse_events(await two.delay(), timeout=10)]
        bad = [frame async for frame in sse_events(await broken.delay(), timeout=10)]
        never = [frame async for frame in sse_events(app.AsyncResult("nobody"), timeout=0.2)]
        return ok, bad, never

    ok, bad, never = await run_worker(app, work)
    assert ok[-1].startswith(b"event: SUCCESS\ndata: {") and ok[-1].endswith(b"\n\n")
    # The result is the last value yielded: sent once, as PROGRESS or (when the stream
    # attached after the task ended) as SUCCESS, whichever the stream saw first.
    assert b"".join(ok).count(b'"info": {"current": 2, "total": 2}') == 1
    assert bad[-1].startswith(b"event: FAILURE\n")
    assert b'"info": {"type": "KeyError", "message": "\'missing\'"}' in bad[-1]
    assert never == [
        b'event: timeout\ndata: {"task_id": "nobody", "state": "timeout", "info": null}\n\n'
    ]


async def test_rpc_keeps_the_states_of_a_task_someone_waits_on_beyond_its_cache_limit() -> None:
    """rpc:// keeps the last ``max_cached`` tasks' states, but never drops one that a caller
    is waiting on: its result would arrive in a fresh entry the waiter never sees."""
    from celeriac.transports.amqp.rpc import RpcBackend

    backend = RpcBackend(
        "rpc://", broker_url="amqp://guest:guest@localhost//", options={"max_cached": 2}
    )
    waited = backend._task("waited")
    with waited.watched():
        for i in range(5):
            backend._task(f"other-{i}")
        assert backend._task("waited") is waited
    backend._task("later")
    assert "waited" in backend._tasks
