"""Celery's built-in tasks (``celery.*``), which canvases send as messages (WAVE2 §1.7).

``celery.chord_unlock`` joins a chord on a result store without a native join (a Celery
client with a database backend publishes it); ``celery.accumulate`` is the body Celery's
``Task.replace(group)`` gives the chord it makes; ``celery.map`` / ``celery.starmap`` run a
task over a list in one message (``task.map(it)``, ``task.chunks(it, n)``);
``celery.backend_cleanup`` is what Celery beat sends every day (our stores expire records
themselves: it does nothing).

They are registered, the way ``@shared_task`` registers, on every app of a process that
imports the worker: only a worker ever runs them, and ``celery.chord_unlock`` ends a chord
with the worker's canvas machinery (:class:`~celeriac.worker.canvas.CanvasSteps`: the body
published, or failed and its error callbacks called).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from celeriac import _state, states
from celeriac.errors import CanvasError, MaxRetriesExceededError, NotRegistered, Retry
from celeriac.protocol import canvas
from celeriac.transports.backend import ChordPart, ResultBackend
from celeriac.worker.canvas import CanvasSteps

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.task import Task

#: How soon ``celery.chord_unlock`` first looks at the header's results again when its
#: message names no interval (Celery's ``result_chord_retry_interval`` default).
CHORD_UNLOCK_INTERVAL = 1.0
#: Each later look comes this many times later than the one before, up to the cap: a long
#: chord is not polled every second for its whole life, a short one is still joined soon.
CHORD_UNLOCK_BACKOFF = 1.5
CHORD_UNLOCK_MAX_INTERVAL = 10.0


def chord_unlock_delay(interval: float | None, retries: int) -> float:
    """Seconds until ``celery.chord_unlock``'s next look, after ``retries`` looks: the
    message's ``interval`` (or :data:`CHORD_UNLOCK_INTERVAL`), growing by
    :data:`CHORD_UNLOCK_BACKOFF` each time, capped at :data:`CHORD_UNLOCK_MAX_INTERVAL` (or
    at ``interval`` when that is longer). Celery polls at a fixed interval."""
    first = interval or CHORD_UNLOCK_INTERVAL
    cap = max(first, CHORD_UNLOCK_MAX_INTERVAL)
    return min(first * CHORD_UNLOCK_BACKOFF ** min(retries, 64), cap)


def register(app: Celery) -> None:
    """Register the built-in tasks on ``app`` (a task of the app's own registered under
    one of their names later replaces it)."""

    async def chord_unlock(
        self: Task[Any, Any],
        group_id: str,
        callback: dict[str, Any],
        interval: float | None = None,
        max_retries: int | None = None,
        result: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Poll the header's results; once all are ready, publish the body with their
        values (or fail it with a ChordError); until then, retry later and later
        (:func:`chord_unlock_delay`)."""
        request = self.request
        conn = await self.app.connection()
        parts = await header_parts(conn.backend, result or [])
        if parts is None:
            if max_retries is not None and request.retries >= max_retries:
                raise MaxRetriesExceededError(
                    f"chord {group_id}: its header was not ready after {max_retries} retries"
                )
            wait = chord_unlock_delay(interval, request.retries)
            raise Retry(None, datetime.now(UTC) + timedelta(seconds=wait))
        body = canvas.check(callback, "celery.chord_unlock body")
        await CanvasSteps(self.app, conn).finish_chord(
            group_id, body, parts, parent_id=request.id, root_id=request.root_id or request.id
        )

    async def accumulate(*args: Any, **kwargs: Any) -> Any:
        """The argument at ``index`` (a kwarg), or all of them."""
        index = kwargs.get("index")
        return args[index] if index is not None else list(args)

    async def xmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        """``task(item)`` for each item, here, in order (not in parallel)."""
        return await run_each(app, task, [(item,) for item in it])

    async def xstarmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        """``task(*item)`` for each item, here, in order."""
        return await run_each(app, task, [tuple(item) for item in it])

    async def backend_cleanup() -> None:
        """Nothing to do: every celeriac store expires records itself."""

    tasks: list[tuple[str, Any, dict[str, Any]]] = [
        ("celery.chord_unlock", chord_unlock, {"bind": True, "ignore_result": True}),
        ("celery.accumulate", accumulate, {}),
        ("celery.map", xmap, {}),
        ("celery.starmap", xstarmap, {}),
        ("celery.backend_cleanup", backend_cleanup, {}),
    ]
    for name, function, options in tasks:
        app.register(function, name=name, **options)


async def run_each(app: Celery, sig: dict[str, Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    """Call the function of the task ``sig`` names with each tuple of ``calls`` in this
    process, as Celery's ``celery.map`` does (the signature's own arguments are not used)."""
    name = sig.get("task") if isinstance(sig, dict) else None
    task = app.tasks.get(name) if isinstance(name, str) else None
    if task is None:
        raise NotRegistered(f"celery.map/starmap: no task {name!r} is registered in this worker")
    if task.is_async:
        return [await task.run(*args) for args in calls]
    return await asyncio.to_thread(lambda: [task.run(*args) for args in calls])


async def header_parts(backend: ResultBackend, header: list[Any]) -> list[ChordPart] | None:
    """The chord parts of the header results (Celery's ``as_tuple()`` form, in
    ``group_index`` order), or None while one is not ready."""
    parts = []
    for index, node in enumerate(header):
        part = await _part(backend, node, index)
        if part is None:
            return None
        parts.append(part)
    return parts


async def _part(backend: ResultBackend, node: Any, index: int) -> ChordPart | None:
    try:
        (task_id, _parent), members = node
    except (TypeError, ValueError):
        raise CanvasError(f"celery.chord_unlock: a header result is malformed: {node!r}") from None
    if members is None:
        meta = await backend.get(task_id)
        state = None if meta is None else meta.get("status")
        if meta is None or state not in states.READY_STATES:
            return None
        return ChordPart(task_id, index, state, meta.get("result"))
    inner = await header_parts(backend, members)  # a group in the header: its list
    if inner is None:
        return None
    failed = next((p for p in inner if p.state in states.PROPAGATE_STATES), None)
    if failed is not None:
        return ChordPart(failed.task_id, index, failed.state, failed.value)
    return ChordPart(task_id, index, states.SUCCESS, [p.value for p in inner])


for _app in _state.apps.share(register):
    register(_app)
