"""ResultSet and GroupResult: the results of several tasks, read together.

As for :class:`~celeriac.result.AsyncResult`, a method that reads the store (``get``,
``join``, ``ready``, ``successful``, ``failed``, ``waiting``, ``completed_count``,
``forget``, and a group's ``save``, ``restore``, ``delete``) is awaited in async code and
blocks in sync code. The members are read concurrently: ``get()`` waits for every task at
once (one store wait per task, no polling), so a timeout bounds the whole call, not each task.

Two ways to go through the members, each for one purpose:

- ``for result in result_set`` (and ``result_set[i]``): the members in their order, no I/O.
- ``async for result in result_set.as_completed(timeout)``: each member as it becomes ready,
  in the order they finish (async code only). A failed member is yielded too: its state and
  exception are read, ``await result.get()`` re-raises it.

A member is an :class:`~celeriac.result.AsyncResult` (an ``EagerResult`` too) or a nested
:class:`GroupResult`, whose value in ``get()`` is the list of its own values.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, overload

from celeriac import _bridge, _state, states
from celeriac._bridge import dual
from celeriac.errors import CeleriacError
from celeriac.result import AsyncResult, ResultTuple, refuse_wait_in_task, result_from_tuple

if TYPE_CHECKING:
    from celeriac.app import Celery

#: What a result set holds: one task's result, or a group's.
Member: TypeAlias = "AsyncResult[Any] | GroupResult"
T = TypeVar("T")


class ResultSet:
    """Several results, read together (Celery's ``ResultSet``). ``results`` is a list the
    set owns; ``add``, ``remove``, ``discard``, ``update`` and ``clear`` change it."""

    def __init__(self, results: Iterable[Member], app: Celery | None = None):
        self.results: list[Member] = list(results)
        self._app = app

    @property
    def app(self) -> Celery:
        """The app given, else the first member's, else the current app."""
        if self._app is None:
            self._app = self.results[0].app if self.results else _state.get_current_app()
        return self._app

    @app.setter
    def app(self, app: Celery) -> None:
        self._app = app

    # -- the members -------------------------------------------------------------------------

    def add(self, result: Member) -> None:
        """Add ``result`` unless the set holds it already."""
        if result not in self.results:
            self.results.append(result)

    def remove(self, result: Member | str) -> None:
        """Remove ``result`` (or the result with this task id); KeyError if it is not held."""
        if isinstance(result, str):
            result = AsyncResult(result, self.app)
        try:
            self.results.remove(result)
        except ValueError:
            raise KeyError(result) from None

    def discard(self, result: Member | str) -> None:
        """Remove ``result`` if the set holds it."""
        with contextlib.suppress(KeyError):
            self.remove(result)

    def update(self, results: Iterable[Member]) -> None:
        """Add each of ``results`` that the set does not hold yet, in order."""
        for result in results:
            self.add(result)

    def clear(self) -> None:
        self.results.clear()

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Member]:
        """The members in their order (no I/O); see :meth:`as_completed` for finish order."""
        return iter(self.results)

    @overload
    def __getitem__(self, index: int) -> Member: ...
    @overload
    def __getitem__(self, index: slice) -> list[Member]: ...
    def __getitem__(self, index: int | slice) -> Member | list[Member]:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResultSet):
            return other.results == self.results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a set that changes has no stable hash

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"

    # -- waiting -----------------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        callback: Callable[[str, Any], object] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> Awaitable[list[Any]]:
        """Every member's value, in the members' order, once all are ready.

        The tasks are waited for at once, so ``timeout`` (seconds) bounds the whole call:
        :class:`celeriac.errors.TimeoutError` after it. With ``propagate``, a failure
        raises the exception of the first failed member in the members' order, as soon as
        the members before it are ready; without, its place holds the exception.
        ``callback(task_id, value)``, if given, is called for each member in order instead
        of collecting the values (the list returned is then empty), as in Celery.
        Inside a running task this refuses, as ``AsyncResult.get`` does.
        """
        refuse_wait_in_task(disable_sync_subtasks)
        return dual(self._join(timeout, propagate, callback))

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        callback: Callable[[str, Any], object] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> Awaitable[list[Any]]:
        """Celery's other name for :meth:`get`, with the same arguments."""
        return self.get(timeout, propagate, callback, disable_sync_subtasks)

    def join_native(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        callback: Callable[[str, Any], object] | None = None,
        disable_sync_subtasks: bool = True,
    ) -> Awaitable[list[Any]]:
        """Celery's name for a join through the store's own notifications: :meth:`get`
        always waits that way here."""
        return self.get(timeout, propagate, callback, disable_sync_subtasks)

    async def _join(
        self,
        timeout: float | None,
        propagate: bool,
        callback: Callable[[str, Any], object] | None,
    ) -> list[Any]:
        members = list(self.results)
        waits = [asyncio.create_task(_value(m, timeout, propagate)) for m in members]
        try:
            values = []
            for member, wait in zip(members, waits, strict=True):
                value = await wait
                if callback is not None:
                    callback(member.id, value)
                else:
                    values.append(value)
            return values
        finally:
            await _cancel(waits)

    def as_completed(
        self, timeout: float | None = None, disable_sync_subtasks: bool = True
    ) -> AsyncGenerator[Member, None]:
        """``async for result in result_set.as_completed()``: each member as it becomes
        ready, in the order they finish (members that finish together come in the members'
        order). Failed members are yielded too (``await result.get()`` re-raises).

        Every member is waited for at once; ``timeout`` (seconds) bounds the whole
        iteration: :class:`celeriac.errors.TimeoutError` after it. Leaving the loop early
        cancels the waits left. Async code only: sync code calls :meth:`get`.
        """
        if not _bridge.in_async_context():
            raise CeleriacError(
                "as_completed() is for 'async for' in async code; in sync code, call"
                " result_set.get(), which returns every value once all are ready"
            )
        refuse_wait_in_task(disable_sync_subtasks)
        return self._as_completed(timeout)

    async def _as_completed(self, timeout: float | None) -> AsyncGenerator[Member, None]:
        members = list(self.results)
        waits = [asyncio.create_task(_value(m, timeout, propagate=False)) for m in members]
        member_of = dict(zip(waits, members, strict=True))
        pending = set(waits)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for wait in (w for w in waits if w in done):
                    wait.result()  # a timeout, or a store out of reach, ends the iteration
                    yield member_of[wait]
        finally:
            await _cancel(waits)

    # -- reading states ----------------------------------------------------------------------

    def ready(self) -> Awaitable[bool]:
        """Whether every member is ready (SUCCESS, FAILURE or REVOKED)."""
        return dual(self._after_refresh(lambda: all(_is_ready(m) for m in self.results)))

    def successful(self) -> Awaitable[bool]:
        """Whether every member succeeded."""
        return dual(self._after_refresh(lambda: all(_succeeded(m) for m in self.results)))

    def failed(self) -> Awaitable[bool]:
        """Whether any member failed."""
        return dual(self._after_refresh(lambda: any(_failed(m) for m in self.results)))

    def waiting(self) -> Awaitable[bool]:
        """Whether any member is not ready yet."""
        return dual(self._after_refresh(lambda: not all(_is_ready(m) for m in self.results)))

    def completed_count(self) -> Awaitable[int]:
        """How many members succeeded (as in Celery: a failed member is not counted)."""
        return dual(self._after_refresh(lambda: sum(_succeeded(m) for m in self.results)))

    async def _after_refresh(self, answer: Callable[[], T]) -> T:
        await self._refresh()
        return answer()

    async def _refresh(self) -> None:
        """Read every task's record at once; the states are then cached on the members."""
        await asyncio.gather(*(_refresh(m) for m in self.results))

    def forget(self) -> Awaitable[None]:
        """Delete every member's record."""
        return dual(self._forget())

    async def _forget(self) -> None:
        await asyncio.gather(*(m.forget() for m in self.results))

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        wait: bool = False,
        timeout: float | None = None,
    ) -> Awaitable[None]:
        """Revoke every task of the set (one broadcast)."""
        return dual(self._revoke(terminate, signal, wait, timeout))

    async def _revoke(
        self, terminate: bool, signal: str, wait: bool, timeout: float | None
    ) -> None:
        ids = [member.id for member in self.results]
        await self.app.control.revoke(
            ids, terminate=terminate, signal=signal, reply=wait, timeout=timeout or 1.0
        )


class GroupResult(ResultSet):
    """The results of a group's tasks, under the group's id (Celery's ``GroupResult``).

    ``save()`` keeps the group in the result store so that ``GroupResult.restore(id)``
    finds it from another process; ``delete()`` drops it. The record is Celery's:
    ``{"result": group_result.as_tuple()}``.
    """

    def __init__(
        self,
        id: str,
        results: Iterable[Member] | None = None,
        parent: Member | None = None,
        app: Celery | None = None,
    ):
        super().__init__(results or [], app)
        self.id = id
        self.parent = parent

    @property
    def children(self) -> list[Member]:
        """The members (Celery's name for them on a group)."""
        return self.results

    def as_tuple(self) -> ResultTuple:
        """Celery's tuple: ``((id, parent's tuple or None), [each member's tuple])``."""
        parent = self.parent.as_tuple() if self.parent is not None else None
        return (self.id, parent), [r.as_tuple() for r in self.results]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return (
                other.id == self.id
                and other.results == self.results
                and other.parent == self.parent
            )
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:  # type: ignore[override]  # a group is known by its id
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    # -- the group's record ------------------------------------------------------------------

    def save(self) -> Awaitable[GroupResult]:
        """Keep the group in the result store (for ``result_expires`` seconds); returns it."""
        return dual(self._save())

    async def _save(self) -> GroupResult:
        backend = (await self.app.connection()).backend
        meta = {"result": self.as_tuple()}
        await backend.save_group(self.id, meta, expires=self.app.conf.result_expires)
        return self

    @classmethod
    def restore(cls, id: str, app: Celery | None = None) -> Awaitable[GroupResult | None]:
        """The group saved under ``id``, or None when the store has no such group."""
        return dual(cls._restore(id, app or _state.get_current_app()))

    @classmethod
    async def _restore(cls, id: str, app: Celery) -> GroupResult | None:
        backend = (await app.connection()).backend
        meta = await backend.restore_group(id)
        if meta is None:
            return None
        group = result_from_tuple(meta["result"], app)
        if not isinstance(group, GroupResult):
            raise CeleriacError(f"the record saved for group {id} holds no group: {meta!r}")
        return group

    def delete(self) -> Awaitable[None]:
        """Drop the group's record (its tasks' records stay: ``forget()`` drops those)."""
        return dual(self._delete())

    async def _delete(self) -> None:
        backend = (await self.app.connection()).backend
        await backend.forget_group(self.id)


# -- one member, whatever its kind -----------------------------------------------------------
# These run in a coroutine, so a member's dual methods hand back awaitables here.


async def _value(member: Member, timeout: float | None, propagate: bool) -> Any:
    return await member.get(timeout, propagate, disable_sync_subtasks=False)


async def _refresh(member: Member) -> None:
    if isinstance(member, ResultSet):
        await member._refresh()
    else:
        await member.refresh()


def _is_ready(member: Member) -> bool:
    if isinstance(member, ResultSet):
        return all(_is_ready(m) for m in member.results)
    return member.state in states.READY_STATES


def _succeeded(member: Member) -> bool:
    if isinstance(member, ResultSet):
        return all(_succeeded(m) for m in member.results)
    return member.state == states.SUCCESS


def _failed(member: Member) -> bool:
    if isinstance(member, ResultSet):
        return any(_failed(m) for m in member.results)
    return member.state == states.FAILURE


async def _cancel(waits: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the waits still running and collect every outcome (none left unread)."""
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
