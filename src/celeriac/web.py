"""A task's live progress as Server-Sent Events, for Starlette and FastAPI.

    from celeriac.web import sse_response

    @api.post("/api/image/process-batch")
    async def process_batch(paths: list[str]):
        result = await images.process_batch.delay(paths)
        return sse_response(result)          # text/event-stream, one event per state

Each event is ``event: <STATE>`` and ``data: {"task_id", "state", "info"}`` (JSON); the
stream ends after the final state. A failed task ends with ``event: FAILURE`` whose ``info``
is ``{"type", "message"}``; a stream that outlives ``timeout`` ends with ``event: timeout``.
Browsers read it with ``new EventSource(url)``. ``sse_events`` is the same stream as bytes,
for any other framework. Starlette is imported only by ``sse_response``
(``pip install 'celeriac[web]'``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from celeriac import errors
from celeriac.result import AsyncResult, Event

if TYPE_CHECKING:
    from starlette.responses import StreamingResponse


async def sse_events(
    result: AsyncResult[Any], *, timeout: float | None = None
) -> AsyncIterator[bytes]:
    """``result.stream()`` in the Server-Sent Events wire format."""
    try:
        async for event in result.stream(timeout=timeout, propagate=False):
            yield _frame(event.state, _payload(event))
    except errors.TimeoutError:
        yield _frame("timeout", {"task_id": result.id, "state": "timeout", "info": None})


def sse_response(
    result: AsyncResult[Any],
    *,
    timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """A Starlette (FastAPI) response that streams ``result``'s events as they happen."""
    from starlette.responses import StreamingResponse

    return StreamingResponse(
        sse_events(result, timeout=timeout),
        media_type="text/event-stream",
        # No caching, and no buffering by a proxy in front (nginx honours this header).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


def _payload(event: Event) -> dict[str, Any]:
    info = event.info
    if isinstance(info, BaseException):
        info = {"type": type(info).__name__, "message": str(info)}
    return {"task_id": event.task_id, "state": event.state, "info": info}


def _frame(name: str, data: dict[str, Any]) -> bytes:
    text = json.dumps(data, default=str)  # a web client wants plain JSON: datetimes as text
    return f"event: {name}\ndata: {text}\n\n".encode()
