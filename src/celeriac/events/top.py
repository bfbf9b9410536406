"""``celeriac events``: a live table of the workers the events tell of, and their tasks.

Redrawn every ``refresh`` seconds (the screen cleared first on a terminal): one line per
worker (alive or not by Celery's heartbeat rule, tasks running, tasks processed, load),
then the most recent tasks under it (state, name, runtime, result or exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, TextIO

from celeriac.errors import BrokerError
from celeriac.events.receiver import EventReceiver
from celeriac.events.state import State, TaskState, WorkerState

if TYPE_CHECKING:
    from celeriac.app import Celery

CLEAR = "\x1b[H\x1b[2J"
#: Tasks shown per worker, most recent first.
TASKS_PER_WORKER = 8
WIDTH = 100


def render(state: State, now: float | None = None) -> str:
    """The table for ``state`` as text."""
    now = time.time() if now is None else now
    lines = [
        f"celeriac events: {len(state.alive_workers(now))} worker(s) online,"
        f" {len(state.tasks)} task(s), {state.event_count} event(s)",
        "",
    ]
    if not state.workers:
        lines.append("(no worker heard from yet)")
    for worker in sorted(state.workers.values(), key=lambda w: w.hostname):
        lines.append(_worker_line(worker, now))
        for task in state.tasks_of(worker.hostname)[:TASKS_PER_WORKER]:
            lines.append(_task_line(task))
    return "\n".join(line[:WIDTH] for line in lines)


def _worker_line(worker: WorkerState, now: float) -> str:
    status = "online " if worker.alive(now) else "offline"
    load = " ".join(f"{x:.2f}" for x in worker.loadavg or ())
    age = f"{now - worker.heartbeats[-1]:.0f}s ago" if worker.heartbeats else "never"
    return (
        f"{status} {worker.hostname}  active {worker.active if worker.active is not None else '?'}"
        f"  processed {worker.processed if worker.processed is not None else '?'}"
        f"  load {load or '?'}  heard {age}  {worker.sw_ident or ''} {worker.sw_ver or ''}"
    )


def _task_line(task: TaskState) -> str:
    outcome = ""
    if task.state == "SUCCESS":
        outcome = f"-> {task.result}"
    elif task.exception:
        outcome = f"!! {task.exception}"
    elif task.state == "PROGRESS" and task.progress:
        outcome = _progress_text(task.progress)
    runtime = f"{task.runtime:.3f}s" if isinstance(task.runtime, int | float) else ""
    return f"    {task.state:<8} {task.uuid}  {task.name or '?'}  {runtime}  {outcome}".rstrip()


def _progress_text(progress: dict[str, Any]) -> str:
    """``3/10`` for a current/total progress, else its fields."""
    current, total = progress.get("current"), progress.get("total")
    if isinstance(current, int | float) and isinstance(total, int | float) and total:
        return f".. {current}/{total} ({100 * current / total:.0f}%)"
    return ".. " + ", ".join(f"{k}={v}" for k, v in sorted(progress.items()))


async def top(app: Celery, out: TextIO, *, refresh: float = 1.0) -> None:
    """Show the table until cancelled; a lost broker is reached again."""
    state = State()
    drawing = asyncio.get_running_loop().create_task(_draw(state, out, refresh))
    try:
        while True:
            try:
                async with EventReceiver(app, wakeup=True) as receiver:
                    async for event in receiver:
                        state.event(event)
                return
            except BrokerError:
                await asyncio.sleep(refresh)
    finally:
        drawing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drawing


async def _draw(state: State, out: TextIO, refresh: float) -> None:
    tty = out.isatty() if hasattr(out, "isatty") else False
    while True:
        text = render(state)
        out.write((CLEAR if tty else "") + text + "\n")
        with contextlib.suppress(AttributeError, ValueError):
            out.flush()
        await asyncio.sleep(refresh)
