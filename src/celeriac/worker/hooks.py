"""The worker's extension points: what happens to each task, and to the worker, as hooks.

A hook is a :class:`WorkerHook` whose subclass overrides any of its methods; the worker calls
them on its event loop, in the order the hooks were given, at these points of each
delivery's life:

- ``task_received``: the message is a task this worker will run (checks passed);
- ``task_started``: just before the task's own code runs;
- ``task_progress``: while it runs, each progress it reports (a value a streaming task
  yields, a state it stores with ``update_state``), once stored;
- then one of ``task_succeeded``, ``task_failed`` (a final failure: not retried),
  ``task_retried`` (a retry was published);
- ``task_ended``: after that, once the outcome is stored and the message settled, with the
  final state (SUCCESS, FAILURE, RETRY, or IGNORED for a task that replaced itself with
  ``self.replace()``); always, with None for a task cut short;
- ``task_rejected``: a delivery that never ran, moved to the dead letters with its reason
  (malformed, unknown task, wrong arguments, too large); ``task_revoked``: a task that
  will not run or was stopped (revoked, expired, or terminated by a revoke).

and ``worker_started`` (the worker is consuming) / ``worker_stopping`` (it stopped
consuming and drains).

Hooks are called synchronously and must not block: anything slow (publishing an event,
say) is handed to a task of the hook's own. A hook that raises is logged, with its
traceback, and the others and the task go on: an extension never loses a message. A method
no hook overrides costs nothing: the worker calls it only through :class:`Hooks`, which
keeps, per method, just the hooks that override it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.task import Request
    from celeriac.transports.broker import Delivery
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")


class WorkerHook:
    """Base class of a hook: every method does nothing; override those you need."""

    def worker_started(self, worker: Worker) -> None:
        """The worker consumes (it logs that it is ready once remote control listens)."""

    def worker_stopping(self, worker: Worker) -> None:
        """The worker stopped consuming; running tasks are drained next."""

    def task_received(self, request: Request) -> None:
        """A delivery passed the checks: its task runs here next."""

    def task_started(self, request: Request) -> None:
        """The task's own code starts now."""

    def task_progress(self, request: Request, state: str, info: Any) -> None:
        """The running task reported progress: ``info`` stored as ``state`` (PROGRESS for a
        value it yielded; what it gave ``update_state`` for its own id)."""

    def task_succeeded(self, request: Request, value: Any, runtime: float) -> None:
        """The task returned ``value`` after ``runtime`` seconds (before it is stored)."""

    def task_failed(self, request: Request, exc: BaseException, runtime: float) -> None:
        """The task failed for good with ``exc`` (a failure that is retried is not one)."""

    def task_retried(self, request: Request, exc: BaseException | None, eta: datetime) -> None:
        """The task asked for a retry; the retry is published to run at ``eta``."""

    def task_ended(self, request: Request, state: str | None, runtime: float) -> None:
        """After success, failure or retry: the outcome is stored, the message settled.
        ``state`` is None for a task cut short (the worker stopped at once; its message goes
        back to the queue) or whose outcome could not be settled."""

    def task_rejected(self, delivery: Delivery, reason: str) -> None:
        """A delivery that does not run went to the dead letters with ``reason``."""

    def task_revoked(self, request: Request, reason: str) -> None:
        """A task stored as REVOKED and acknowledged: ``reason`` is ``revoked`` or
        ``expired`` (it never ran) or ``terminated`` (its run was stopped by a revoke;
        ``task_ended`` follows then)."""


#: The methods of :class:`WorkerHook`, the points at which hooks are called.
HOOK_POINTS = tuple(
    name for name, value in vars(WorkerHook).items() if callable(value) and name[0] != "_"
)


class Hooks(WorkerHook):
    """Several hooks as one: each method calls the hooks that override it, in order, and
    logs (never raises) what one of them raises."""

    def __init__(self, hooks: Sequence[WorkerHook] = ()) -> None:
        self.hooks = list(hooks)
        for point in HOOK_POINTS:
            overriding = [
                getattr(hook, point)
                for hook in self.hooks
                if getattr(type(hook), point) is not getattr(WorkerHook, point)
            ]
            if overriding:  # otherwise the base class's no-op stays
                setattr(self, point, _fan_out(point, overriding))


def _fan_out(point: str, methods: list[Callable[..., None]]) -> Callable[..., None]:
    def call(*args: Any) -> None:
        for method in methods:
            try:
                method(*args)
            except Exception:
                logger.exception("worker hook %s.%s failed", _owner(method), point)

    return call


def _owner(method: Callable[..., None]) -> str:
    owner = getattr(method, "__self__", None)
    return type(owner).__name__ if owner is not None else repr(method)
