"""The requests a worker is running: what remote control's ``inspect active`` and a
dashboard list (id, name, arguments, start time, worker), kept by a worker hook."""

from __future__ import annotations

import asyncio
import os
import time
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

    def as_celery(self) -> dict[str, Any]:
        """The task as Celery's ``inspect active`` reports it."""
        request = self.request
        return {
            "id": request.id,
            "name": request.task,
            "args": list(request.args),
            "kwargs": dict(request.kwargs),
            "type": request.task,
            "hostname": request.hostname,
            "time_start": self.started,
            "acknowledged": True,
            "delivery_info": dict(request.delivery_info or {}),
            "worker_pid": os.getpid(),
        }


class RunningRequests(WorkerHook):
    """The registry: a task is in it from ``task_started`` until ``task_ended``."""

    def __init__(self) -> None:
        self._running: dict[str, Running] = {}

    def task_started(self, request: Request) -> None:
        self._running[request.id] = Running(request, time.time(), asyncio.current_task())

    def task_ended(self, request: Request, state: str | None, runtime: float) -> None:
        # Only this run's entry: a task that replaced itself may already have its
        # replacement, under the same id, running here.
        running = self._running.get(request.id)
        if running is not None and running.request is request:
            del self._running[request.id]

    def active(self) -> list[Running]:
        """What runs now, oldest first."""
        return sorted(self._running.values(), key=lambda running: running.started)

    def snapshot(self) -> list[Running]:
        """What runs now, safe to call from another thread (the loop watch's): one copy
        made in C, while the loop may add and remove entries."""
        return list(self._running.copy().values())

    def __len__(self) -> int:
        return len(self._running)
