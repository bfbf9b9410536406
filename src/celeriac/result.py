"""AsyncResult: a handle on a task's state and result, for async and sync callers alike.

Methods that read the store (``get``, ``ready``, ``successful``, ``failed``, ``refresh``,
``forget``) are awaited in async code and block in sync code: one implementation, the sync
side goes through ``celeriac._bridge``. Properties (``state``, ``result``, ...) read the store
in sync code, as in Celery; in async code a property cannot await, so they show what the last
awaited call read, and say so if nothing was read yet.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Coroutine, Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from celeriac import _bridge, states
from celeriac.errors import CeleriacError, SyncWaitInTaskError
from celeriac.resultmeta import Meta, exception_from_dict

if TYPE_CHECKING:
    from celeriac.app import Celery

R = TypeVar("R")
T = TypeVar("T")

#: Set while a worker runs a task, so ``get()`` can refuse to deadlock it.
inside_task: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "celeriac_inside_task", default=False
)


def dual(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Hand ``coro`` back to an async caller, or run it to the end for a sync caller."""
    if _bridge.in_async_context():
        return coro
    return cast(Awaitable[T], _bridge.run(coro))


class AsyncResult(Generic[R]):
    """The state and result of one task, by id. ``await`` a freshly sent one to confirm it."""

    def __init__(self, id: str, app: Celery | None = None, *, task_name: str | None = None):
        from celeriac.app import default_app

        self.id = id
        self.app = app or default_app()
        self.task_name = task_name
        self._meta: Meta | None = None
        self._sending: asyncio.Future[None] | None = None

    # -- identity --------------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __await__(self) -> Generator[Any, None, AsyncResult[R]]:
        """Wait until the broker has the message (an async ``delay`` publishes eagerly)."""
        if self._sending is not None:
            yield from self._sending.__await__()
        return self

    # -- reading the store -----------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
    ) -> Awaitable[R]:
        """The task's return value once it is ready; re-raises its exception if it failed.

        Inside a running task this refuses (deadlock risk) unless ``disable_sync_subtasks``
        is False. ``timeout`` raises :class:`celeriac.errors.TimeoutError`.
        """
        if disable_sync_subtasks and inside_task.get():
            raise SyncWaitInTaskError(
                "Never call result.get() within a task: the task you wait for may need the "
                "worker slot this one holds, which deadlocks the worker. Chain the tasks, or "
                "pass disable_sync_subtasks=False if you know the wait is safe."
            )
        return dual(self._get(timeout, propagate))

    async def _get(self, timeout: float | None, propagate: bool) -> R:
        await self
        backend = (await self.app.connection()).backend
        self._meta = await backend.wait(self.id, timeout)
        return cast(R, self._outcome(propagate))

    def _outcome(self, propagate: bool) -> Any:
        meta = self._meta or {}
        status = meta.get("status", states.PENDING)
        if status in states.PROPAGATE_STATES:
            exc = exception_from_dict(meta.get("result"), meta.get("traceback"))
            if propagate:
                raise exc
            return exc
        return meta.get("result")

    def refresh(self) -> Awaitable[str]:
        """Read the record again; returns the state."""
        return dual(self._refresh())

    async def _refresh(self) -> str:
        backend = (await self.app.connection()).backend
        self._meta = await backend.get(self.id) or {"status": states.PENDING, "result": None}
        return str(self._meta["status"])

    def ready(self) -> Awaitable[bool]:
        return dual(self._state_in(states.READY_STATES))

    def successful(self) -> Awaitable[bool]:
        return dual(self._state_in(frozenset({states.SUCCESS})))

    def failed(self) -> Awaitable[bool]:
        return dual(self._state_in(frozenset({states.FAILURE})))

    async def _state_in(self, wanted: frozenset[str]) -> bool:
        return await self._refresh() in wanted

    def forget(self) -> Awaitable[None]:
        """Delete the stored record."""
        return dual(self._forget())

    async def _forget(self) -> None:
        backend = (await self.app.connection()).backend
        await backend.forget(self.id)
        self._meta = None

    # -- properties --------------------------------------------------------------------------

    def _current(self) -> Meta:
        if _bridge.in_async_context():
            if self._meta is None:
                raise CeleriacError(
                    "in async code, await result.refresh() (or ready()/get()) before reading "
                    "its state: a property cannot wait for the store"
                )
            return self._meta
        _bridge.run(self._refresh())
        assert self._meta is not None
        return self._meta

    @property
    def state(self) -> str:
        return str(self._current().get("status", states.PENDING))

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception instance for FAILURE; PROGRESS meta while running."""
        meta = self._current()
        if meta.get("status") in states.EXCEPTION_STATES:
            return exception_from_dict(meta.get("result"), meta.get("traceback"))
        return meta.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        tb = self._current().get("traceback")
        return str(tb) if tb is not None else None

    @property
    def date_done(self) -> datetime | None:
        value = self._current().get("date_done")
        return datetime.fromisoformat(value) if isinstance(value, str) else None
