"""AsyncResult: a handle on a task's state and result, for async and sync callers alike.

Methods that read the store (``get``, ``ready``, ``successful``, ``failed``, ``refresh``,
``forget``) are awaited in async code and block in sync code: one implementation, the sync
side goes through ``celeriac._bridge``. Properties (``state``, ``result``, ``children``, ...)
read the store in sync code, as in Celery; in async code a property cannot await, so they
show what the last awaited call read, and say so if nothing was read yet.

The results of several tasks (``ResultSet``, ``GroupResult``) live in
:mod:`celeriac.result.group` and are importable from here. :func:`result_from_tuple` turns
Celery's nested result tuples (a record's ``children``, a saved group) back into results.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Generator,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar, cast

from celeriac import _bridge, _state, states
from celeriac._bridge import answer, dual
from celeriac.errors import CeleriacError, SyncWaitInTaskError, TimeoutError
from celeriac.protocol.records import Meta, exception_from_dict

if TYPE_CHECKING:
    from celeriac.app import Celery

R = TypeVar("R")
T = TypeVar("T")

#: Celery's result tuple: ``((id, parent's tuple or None), None)`` for a task,
#: ``((group id, parent's tuple or None), [member tuples])`` for a group. Stored as JSON, the
#: tuples come back as lists: :func:`result_from_tuple` reads both.
ResultTuple: TypeAlias = tuple[tuple[str, "ResultTuple | None"], "list[ResultTuple] | None"]


def refuse_wait_in_task(disable_sync_subtasks: bool) -> None:
    """Refuse to wait for results inside a running task, unless the caller opted out."""
    if disable_sync_subtasks and _state.inside_task.get():
        raise SyncWaitInTaskError(
            "Never call result.get() within a task: the task you wait for may need the "
            "worker slot this one holds, which deadlocks the worker. Chain the tasks, or "
            "pass disable_sync_subtasks=False if you know the wait is safe."
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One state of a task, as ``result.stream()`` reports it.

    ``info`` is what the state carries: for PROGRESS, the value the task yielded (or the
    ``meta`` of ``update_state``); for SUCCESS, the result; for an exception state (RETRY,
    and FAILURE when not propagated), the exception.
    """

    state: str
    info: Any
    task_id: str

    @property
    def ready(self) -> bool:
        """The final event: SUCCESS, FAILURE or REVOKED."""
        return self.state in states.READY_STATES


class ResultStream:
    """``async for`` in async code, ``for`` in sync code: the task's events as they happen.

    The first event is the task's latest state (nothing, while it is PENDING); then every
    later event, in order; the last is its final state. A failed task raises its exception
    at the end instead, unless ``propagate=False``. ``timeout`` bounds the whole stream.
    """

    def __init__(self, result: AsyncResult[Any], timeout: float | None, propagate: bool):
        self._result = result
        self._timeout = timeout
        self._propagate = propagate

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    def __iter__(self) -> Iterator[Event]:
        if _bridge.in_async_context():
            raise CeleriacError("in async code, use 'async for event in result.stream()'")
        events = self._events()
        try:
            while True:
                try:
                    yield _bridge.run(_next(events))
                except StopAsyncIteration:
                    return
        finally:
            _bridge.run(events.aclose())

    async def _events(self) -> AsyncGenerator[Event, None]:
        result = self._result
        await result
        backend = (await result.app.connection()).backend
        async for meta in backend.stream(result.id, self._timeout):
            result._meta = meta
            state = str(meta.get("status", states.PENDING))
            info = meta.get("result")
            if state in states.EXCEPTION_STATES:
                info = exception_from_dict(info, meta.get("traceback"))
                if self._propagate and state in states.PROPAGATE_STATES:
                    raise info
            yield Event(state, info, result.id)


async def _next(events: AsyncGenerator[Event, None]) -> Event:
    return await anext(events)


class AsyncResult(Generic[R]):
    """The state and result of one task, by id. ``await`` a freshly sent one to confirm it.

    ``parent`` is the result of what came before this task, set by whoever builds the
    result: a chain's result is its last task's, linked through ``parent`` to the earlier
    ones; a chord's body result has its header's :class:`GroupResult` as parent. It is not
    read from the store.
    """

    def __init__(
        self,
        id: str,
        app: Celery | None = None,
        *,
        task_name: str | None = None,
        parent: AsyncResult[Any] | GroupResult | None = None,
    ):
        if app is None:
            app = _state.get_current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        self.parent = parent
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

    def as_tuple(self) -> ResultTuple:
        """Celery's tuple for this result, its parents nested in it (see :data:`ResultTuple`)."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return (self.id, parent), None

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
        follow_parents: bool = True,
    ) -> Awaitable[R]:
        """The task's return value once it is ready; re-raises its exception if it failed.

        Inside a running task this refuses (deadlock risk) unless ``disable_sync_subtasks``
        is False. ``timeout`` raises :class:`celeriac.errors.TimeoutError`. With
        ``follow_parents`` (Celery's default), a failed task that follows others (a
        chain's step, a chord's body: see ``parent``) raises the failure of the earliest of
        them that failed, as Celery's does: the error where the canvas broke.
        """
        refuse_wait_in_task(disable_sync_subtasks)
        return dual(self._get(timeout, propagate, follow_parents))

    def wait(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
    ) -> Awaitable[R]:
        """Celery's other name for :meth:`get`, with the same arguments."""
        return self.get(timeout, propagate, disable_sync_subtasks, follow_parents)

    async def _get(self, timeout: float | None, propagate: bool, follow_parents: bool = True) -> R:
        await self
        backend = (await self.app.connection()).backend
        self._meta = await backend.wait(self.id, timeout)
        failed = self._meta.get("status") in states.PROPAGATE_STATES
        if failed and propagate and follow_parents and self.parent is not None:
            await _raise_parent_failure(self.parent, backend)
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

    def stream(self, timeout: float | None = None, propagate: bool = True) -> ResultStream:
        """The task's events as they happen (``async for`` / ``for``): its latest state, every
        later PROGRESS (each value a yielding task yields, each ``update_state``), then its
        final state. See :class:`ResultStream`."""
        if _state.inside_task.get():
            raise SyncWaitInTaskError(
                "Never stream a result within a task: the task you follow may need the worker"
                " slot this one holds, which deadlocks the worker."
            )
        return ResultStream(self, timeout, propagate)

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

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        wait: bool = False,
        timeout: float | None = None,
    ) -> Awaitable[None]:
        """Revoke the task (``app.control.revoke``): workers will not run it, and with
        ``terminate`` a run in progress stops. ``wait``: until the workers answered (for
        ``timeout`` seconds). ``connection`` is Celery's and not used."""
        return dual(self._revoke(terminate, signal, wait, timeout))

    async def _revoke(
        self, terminate: bool, signal: str, wait: bool, timeout: float | None
    ) -> None:
        await self.app.control.revoke(
            self.id, terminate=terminate, signal=signal, reply=wait, timeout=timeout or 1.0
        )

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

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult] | None:
        """The results of the tasks this task started, as its record lists them (None when
        the record names none)."""
        children = self._current().get("children")
        if children is None:
            return None
        return [result_from_tuple(child, self.app) for child in children]


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in the caller (``Task.apply``, or ``delay`` under
    ``task_always_eager``), as Celery's ``EagerResult``: nothing is read from a store.

    ``get()``, ``ready()``, ``successful()``, ``failed()`` answer at once in sync code and are
    awaited in async code, as ``AsyncResult``'s are. An ``async def`` task applied from async
    code runs as an asyncio task started at once: ``await result`` (or ``get()``) waits for it,
    and until it ends its state is STARTED.
    """

    def __init__(self, id: str, app: Celery, *, task_name: str | None = None):
        super().__init__(id, app, task_name=task_name)
        self._meta = {"status": states.STARTED, "result": None, "traceback": None}
        self._value: Any = None

    def finish(self, state: str, value: Any, traceback: str | None = None) -> None:
        """Record the task's end: SUCCESS with its return value, FAILURE with its exception."""
        self._value = value
        shown = value if state == states.SUCCESS else None
        self._meta = {"status": state, "result": shown, "traceback": traceback}

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        follow_parents: bool = True,
    ) -> Awaitable[R]:
        """The return value; re-raises the task's exception when it failed and ``propagate``.
        A result known at once needs no wait, so this is allowed inside a task too."""
        if _bridge.in_async_context():
            return self._get(timeout, propagate)
        return cast(Awaitable[R], self._outcome(propagate))

    async def _get(self, timeout: float | None, propagate: bool, follow_parents: bool = True) -> R:
        try:
            await asyncio.wait_for(self._finished(), timeout)
        except builtins.TimeoutError:
            raise TimeoutError(
                f"eagerly run task {self.id} was not finished after {timeout} s"
            ) from None
        return cast(R, self._outcome(propagate))

    async def _finished(self) -> None:
        running = self._sending
        if running is not None:
            await asyncio.wait([running])
            if not running.cancelled():
                running.exception()  # read here: it is the result's, raised by _outcome

    def _outcome(self, propagate: bool) -> Any:
        if self.state == states.FAILURE:
            if propagate:
                raise self._value
            return self._value
        return self._value

    def stream(self, timeout: float | None = None, propagate: bool = True) -> ResultStream:
        raise CeleriacError(
            "an eagerly run task has no event stream (its progress is not stored): read"
            " result.get(), or run it on a worker to follow it with stream()"
        )

    def refresh(self) -> Awaitable[str]:
        return answer(self.state)

    def ready(self) -> Awaitable[bool]:
        return answer(self.state in states.READY_STATES)

    def successful(self) -> Awaitable[bool]:
        return answer(self.state == states.SUCCESS)

    def failed(self) -> Awaitable[bool]:
        return answer(self.state == states.FAILURE)

    def forget(self) -> Awaitable[None]:
        return answer(None)

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        wait: bool = False,
        timeout: float | None = None,
    ) -> Awaitable[None]:
        """An eagerly run task has ended already: nothing to revoke."""
        return answer(None)

    def _current(self) -> Meta:
        assert self._meta is not None
        return self._meta

    @property
    def result(self) -> Any:
        """The return value, or the exception instance for FAILURE."""
        return self._value

    info = result


def result_from_tuple(
    result: ResultTuple | Sequence[Any] | AsyncResult[Any] | GroupResult,
    app: Celery | None = None,
) -> AsyncResult[Any] | GroupResult:
    """The result a Celery result tuple (or its JSON form, lists for tuples) stands for: an
    :class:`AsyncResult`, or a :class:`GroupResult` when the tuple lists members; parents
    and nested groups included. A result passed in is returned as it is."""
    if isinstance(result, AsyncResult | GroupResult):
        return result
    if app is None:
        app = _state.get_current_app()
    head, members = result
    # Celery's oldest tuples name a bare id where newer ones pair it with the parent's tuple.
    id, parent_tuple = head if isinstance(head, list | tuple) else (head, None)
    parent = result_from_tuple(parent_tuple, app) if parent_tuple else None
    if members is not None:
        return GroupResult(
            id, [result_from_tuple(member, app) for member in members], parent=parent, app=app
        )
    return AsyncResult(id, app, parent=parent)


# Last: the results of several tasks are built on AsyncResult and read from here too.
from celeriac.result.group import GroupResult as GroupResult  # noqa: E402
from celeriac.result.group import ResultSet as ResultSet  # noqa: E402


async def _raise_parent_failure(parent: AsyncResult[Any] | GroupResult, backend: Any) -> None:
    """Raise the failure of the earliest of ``parent`` and its own parents that failed (a
    group: its first member that failed, in order); nothing when none did. One read per
    result, done only for a task that failed."""
    lineage: list[Any] = []
    node: Any = parent
    while node is not None:
        lineage.append(node)
        node = node.parent
    for node in reversed(lineage):
        members = node.results if hasattr(node, "results") else [node]
        for member in members:
            if not isinstance(member, AsyncResult) or isinstance(member, EagerResult):
                continue
            meta = await backend.get(member.id)
            if meta is not None and meta.get("status") in states.PROPAGATE_STATES:
                raise exception_from_dict(meta.get("result"), meta.get("traceback"))
