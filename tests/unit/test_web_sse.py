"""``celeriac.web``: each value sent once in the wrapped form, and ``wrap=False`` read by a
client that knows only its own JSON (written like gunicorn's dirty-arbiter example's), over
a real HTTP server (uvicorn) streaming to httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac import Celery
from celeriac.web import sse_response
from celeriac.web.sse import sse_events
from inprocess import memory_app, run_worker
from services import eventually, free_port


class StreamFailed(Exception):
    """The client's own error: the server said the task failed."""


def dirty_style_client(url: str, on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A client as the dirty-arbiter example writes it: reads ``data:`` lines, decodes each,
    branches on its own ``progress["type"]``, stops at its own ``complete``. Nothing in it
    knows celeriac."""
    with httpx.stream("GET", url, timeout=30) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            progress = json.loads(line[len("data: ") :])
            if progress["type"] == "progress":
                on_progress(progress)
            elif progress["type"] == "complete":
                return dict(progress)
            elif progress["type"] == "error":
                raise StreamFailed(progress["message"])
    raise AssertionError("the stream ended without a 'complete'")


@asynccontextmanager
async def serving(app: Celery, task_name: str) -> AsyncIterator[str]:
    """uvicorn on a free port, in this loop, streaming ``task_name`` unwrapped; yields its URL."""

    async def stream(request: Request) -> Response:
        result = await app.send_task(task_name)
        return sse_response(result, timeout=20, wrap=False)

    web = Starlette(routes=[Route("/stream", stream)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    running = asyncio.get_running_loop().create_task(server.serve())
    try:
        await eventually(lambda: server.started or running.done(), 10, "uvicorn to listen")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/stream"
    finally:
        server.should_exit = True
        await asyncio.wait_for(running, 10)


async def test_an_unwrapped_stream_is_read_live_by_a_client_that_knows_only_its_own_json() -> None:
    app = memory_app("web-sse")
    release = asyncio.Event()

    @app.task(bind=True)
    async def generate(self: Any) -> AsyncIterator[dict[str, Any]]:
        await self.update_state(state="PROGRESS", meta={"type": "progress", "step": "load"})
        for i in range(3):
            yield {"type": "progress", "current": i + 1, "total": 3}
            if i == 0:
                await release.wait()  # the rest only once the client has seen this one
        yield {"type": "complete", "text": "done"}

    async def work() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, Any]] = []

        def on_progress(progress: dict[str, Any]) -> None:
            seen.append(progress)
            if progress.get("current") == 1:
                loop.call_soon_threadsafe(release.set)

        async with serving(app, generate.name) as url:
            complete = await asyncio.to_thread(dirty_style_client, url, on_progress)
        return seen, complete

    seen, complete = await run_worker(app, work)
    # Exactly as yielded (no task_id/state/info around them), each once, in order, live.
    assert seen[-3:] == [{"type": "progress", "current": i, "total": 3} for i in (1, 2, 3)]
    assert seen[:-3] in ([], [{"type": "progress", "step": "load"}])  # attached late, or not
    assert complete == {"type": "complete", "text": "done"}


async def test_an_unwrapped_stream_of_a_failed_task_ends_with_one_error_event() -> None:
    app = memory_app("web-sse-fail")

    @app.task
    async def breaks() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "progress", "current": 1}
        raise ValueError("disk full on /data")

    async def work() -> tuple[str, list[bytes]]:
        async with serving(app, breaks.name) as url:
            try:
                await asyncio.to_thread(dirty_style_client, url, lambda progress: None)
            except StreamFailed as exc:
                message = str(exc)
            else:
                raise AssertionError("the client was not told that the task failed")
        frames = [f async for f in sse_events(await breaks.delay(), timeout=10, wrap=False)]
        return message, frames

    message, frames = await run_worker(app, work)
    assert message == "disk full on /data"
    error = frames[-1]
    assert error.startswith(b"event: error\ndata: ")
    data = json.loads(error.split(b"data: ", 1)[1])
    assert data == {
        "type": "error",
        "task_id": data["task_id"],
        "state": "FAILURE",
        "exception": "ValueError",
        "message": "disk full on /data",
    }
    # Before it, only values as yielded: no state, no result.
    assert all(f == b'data: {"type": "progress", "current": 1}\n\n' for f in frames[:-1])


async def test_an_unwrapped_stream_that_outlives_its_timeout_says_so_as_an_error() -> None:
    app = memory_app("web-sse-timeout")
    frames = [f async for f in sse_events(app.AsyncResult("nobody"), timeout=0.2, wrap=False)]
    assert len(frames) == 1 and frames[0].startswith(b"event: error\ndata: ")
    data = json.loads(frames[0].split(b"data: ", 1)[1])
    assert (data["type"], data["task_id"], data["state"]) == ("error", "nobody", "timeout")
    assert data["exception"] == "TimeoutError" and "nobody" in data["message"]


async def test_the_wrapped_stream_sends_a_generator_s_last_value_once() -> None:
    app = memory_app("web-sse-wrapped")
    release = asyncio.Event()

    @app.task
    async def two() -> AsyncIterator[dict[str, int]]:
        yield {"current": 1, "total": 2}
        await release.wait()  # the stream attaches while the task runs
        yield {"current": 2, "total": 2}

    @app.task
    async def returns() -> AsyncIterator[int]:
        yield 1
        await release.wait()
        yield 2
        return  # a bare return: the result is still the last value yielded

    async def frames_of(result_task: Any) -> list[tuple[str, dict[str, Any]]]:
        release.clear()
        events = []
        async for frame in sse_events(await result_task.delay(), timeout=10):
            name, data = frame.decode().removesuffix("\n\n").split("\n")
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
            release.set()
        return events

    async def work() -> list[list[tuple[str, dict[str, Any]]]]:
        return [await frames_of(two), await frames_of(returns)]

    two_events, returns_events = await run_worker(app, work)
    assert [(n, d.get("info")) for n, d in two_events] == [
        ("PROGRESS", {"current": 1, "total": 2}),
        ("PROGRESS", {"current": 2, "total": 2}),
        ("SUCCESS", None),
    ]
    assert "info" not in two_events[-1][1]  # absent: the result is the value just sent
    assert [(n, d.get("info", "absent")) for n, d in returns_events] == [
        ("PROGRESS", 1),
        ("PROGRESS", 2),
        ("SUCCESS", "absent"),
    ]


async def test_the_wrapped_stream_carries_a_result_that_was_not_yielded() -> None:
    app = memory_app("web-sse-result")

    @app.task
    async def plain() -> None:
        return None

    async def work() -> list[bytes]:
        return [f async for f in sse_events(await plain.delay(), timeout=10)]

    frames = await run_worker(app, work)
    assert frames[-1].startswith(b"event: SUCCESS\n")
    assert b'"info": null' in frames[-1]  # None as a result is null, never an absent info
