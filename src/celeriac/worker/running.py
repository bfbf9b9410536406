"""The requests a worker holds: those it runs (remote control's ``inspect active``, a
dashboard's list: id, name, arguments, start time, worker), those received and not started
yet (``inspect reserved``), and how many of each task it took (``stats``'s ``total``),
kept by a worker hook."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.worker.hooks import WorkerHook

if TYPE_CHECKING:
    from celeriac.task import Request


@dataclass(frozen=True, slots=True)
class Running:
    """One task running in this worker process."""

    request: Request
    #: Unix time at which its code started.
    started: float
    #: The asyncio task that runs it (the worker's handler of its delivery): the loop watch
    #: names the task the loop is stuck in by it.
    handler: asyncio.Task[Any] | None = None

    def as_celery(self, safe: bool = False) -> dict[str, Any]:
        """The task as Celery's ``inspect active`` reports it."""
        return request_info(self.request, self.started, safe=safe)


def request_info(request: Request, started: float | None, *, safe: bool = False) -> dict[str, Any]:
    """A request as Celery's ``inspect active``/``reserved`` report it (``Request.info``):
    ``started`` None for one not running yet. ``safe``: the arguments as their repr strings
    (what Flower asks for), never the values."""
    return {
        "id": request.id,
        "name": request.task,
        "args": repr(list(request.args)) if safe else list(request.args),
        "kwargs": repr(dict(request.kwargs)) if safe else dict(request.kwargs),
        "type": request.task,
        "hostname": request.hostname,
        "time_start": started,
        "acknowledged": started is not None,
        "delivery_info": dict(request.delivery_info or {}),
        "worker_pid": os.getpid() if started is not None else None,
    }


class RunningRequests(WorkerHook):
    """The registry: a task is reserved from ``task_received`` until ``task_started``, and
    running from then until ``task_ended``."""

    def __init__(self) -> None:
        self._running: dict[str, Running] = {}
        self._reserved: dict[str, Request] = {}
        #: Tasks received, per task name, since the worker started (``stats``'s ``total``).
        self.total: Counter[str] = Counter()

    def task_received(self, request: Request) -> None:
        self._reserved[request.id] = request
        self.total[request.task] += 1

    def task_started(self, request: Request) -> None:
        self._reserved.pop(request.id, None)
        self._running[request.id] = Running(request, time.time(), asyncio.current_task())

    def task_ended(self, request: Request, state: str | None, runtime: float) -> None:
        if self._reserved.get(request.id) is request:  # ended before it started
            del self._reserved[request.id]
        # Only this run's entry: a task that replaced itself may already have its
        # replacement, under the same id, running here.
        running = self._running.get(request.id)
        if running is not None and running.request is request:
            del self._running[request.id]

    def reserved(self) -> list[Request]:
        """Received here and not started yet, in the order they came."""
        return list(self._reserved.values())

    def find(self, task_id: str) -> Running | Request | None:
        """The run of ``task_id`` here, or its request if it is only reserved."""
        return self._running.get(task_id) or self._reserved.get(task_id)

    def active(self) -> list[Running]:
        """What runs now, oldest first."""
        return sorted(self._running.values(), key=lambda running: running.started)

    def snapshot(self) -> list[Running]:
        """What runs now, safe to call from another thread (the loop watch's): one copy
        made in C, while the loop may add and remove entries."""
        return list(self._running.copy().values())

    def __len__(self) -> int:
        return len(self._running)
