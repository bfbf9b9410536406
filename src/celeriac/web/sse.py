"""A task's live progress as Server-Sent Events, for Starlette and FastAPI.

    from celeriac.web import sse_response

    @api.post("/api/image/process-batch")
    async def process_batch(paths: list[str]):
        result = await images.process_batch.delay(paths)
        return sse_response(result)          # text/event-stream, one event per state

Wrapped (the default): each event is ``event: <STATE>`` and
``data: {"task_id", "state", "info"}`` (JSON); the stream ends after the final state, and
each value is sent once. A generator task that returns nothing has its last yielded value as
its result: that value goes once, as PROGRESS, and the SUCCESS event that follows has no
``info`` key (``info`` absent means "the result is the PROGRESS value just sent"; a result of
``None`` is ``"info": null``). A failed task ends with ``event: FAILURE`` whose ``info`` is
``{"type", "message"}``; a stream that outlives ``timeout`` ends with ``event: timeout``.

Unwrapped (``sse_response(result, wrap=False)``): each value the task yields (and each
``update_state`` meta) is one ``data:`` line, its JSON exactly as yielded, so a client that
reads ``data:`` lines and branches on its own ``{"type": ...}`` works unchanged. Nothing else
is sent as data: not the states, not the return value (the last yielded value, for a
generator that returns nothing), so a stream opened after the task ended sends no data
(read its result with ``result.get()``). A task that fails, is revoked, or outlives
``timeout`` ends the stream with one ``event: error`` whose data is ``{"type": "error",
"task_id", "state", "exception", "message"}``.

Browsers read either with ``new EventSource(url)``. ``sse_events`` is the same stream as
bytes, for any other framework. Starlette is imported only by ``sse_response``
(celeriac's ``web`` extra).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from celeriac import errors, states
from celeriac._install import install_hint
from celeriac.result import AsyncResult, Event

if TYPE_CHECKING:
    from starlette.responses import StreamingResponse

# States that carry no value of the task's own: their info is the worker's (STARTED's pid
# and hostname) or an exception, never something the task yielded or passed to update_state.
_NOT_PROGRESS = states.ALL_STATES - {states.PROGRESS}


async def sse_events(
    result: AsyncResult[Any], *, timeout: float | None = None, wrap: bool = True
) -> AsyncIterator[bytes]:
    """``result.stream()`` in the Server-Sent Events wire format (see the module docstring
    for the wrapped and unwrapped forms)."""
    frames = _wrapped_frames(result, timeout) if wrap else _unwrapped_frames(result, timeout)
    async for frame in frames:
        yield frame


def sse_response(
    result: AsyncResult[Any],
    *,
    timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
    wrap: bool = True,
) -> StreamingResponse:
    """A Starlette (FastAPI) response that streams ``result``'s events as they happen.

    ``wrap=False`` sends each yielded value exactly as yielded (see the module docstring).
    """
    try:
        from starlette.responses import StreamingResponse
    except ImportError:
        raise errors.ConfigurationError(
            f"sse_response needs Starlette: {install_hint('web')}"
        ) from None

    return StreamingResponse(
        sse_events(result, timeout=timeout, wrap=wrap),
        media_type="text/event-stream",
        # No caching, and no buffering by a proxy in front (nginx honours this header).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


async def _wrapped_frames(result: AsyncResult[Any], timeout: float | None) -> AsyncIterator[bytes]:
    last_progress: str | None = None  # the JSON of the PROGRESS value just sent, if any
    try:
        async for event in result.stream(timeout=timeout, propagate=False):
            payload = _payload(event)
            info = _json(payload["info"])
            if event.state == states.SUCCESS and info == last_progress:
                del payload["info"]  # already sent as the PROGRESS just before: send it once
            last_progress = info if event.state == states.PROGRESS else None
            yield _frame(event.state, payload)
    except errors.TimeoutError:
        yield _frame("timeout", {"task_id": result.id, "state": "timeout", "info": None})


async def _unwrapped_frames(
    result: AsyncResult[Any], timeout: float | None
) -> AsyncIterator[bytes]:
    try:
        async for event in result.stream(timeout=timeout, propagate=False):
            if event.state not in _NOT_PROGRESS:
                yield f"data: {_json(event.info)}\n\n".encode()
            elif event.ready and event.state != states.SUCCESS:
                yield _frame("error", _error(result.id, event.state, event.info))
    except errors.TimeoutError as exc:
        yield _frame("error", _error(result.id, "timeout", exc))


def _error(task_id: str, state: str, info: Any) -> dict[str, Any]:
    """What failed, for a client that knows only its own ``{"type": ...}`` values."""
    exception = type(info).__name__ if isinstance(info, BaseException) else None
    return {
        "type": "error",
        "task_id": task_id,
        "state": state,
        "exception": exception,
        "message": str(info),
    }


def _payload(event: Event) -> dict[str, Any]:
    info = event.info
    if isinstance(info, BaseException):
        info = {"type": type(info).__name__, "message": str(info)}
    return {"task_id": event.task_id, "state": event.state, "info": info}


def _json(value: Any) -> str:
    return json.dumps(value, default=str)  # a web client wants plain JSON: datetimes as text


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {_json(data)}\n\n".encode()
