"""Revoked tasks: the ids a worker refuses to run, and the remote-control commands that
revoke (``revoke``, ``terminate``, ``revoke_by_stamped_headers``, ``inspect revoked``).

Celery keeps revoked ids in each worker's memory only: a worker that was not running when
the revoke was broadcast, or that restarted since, runs the task. celeriac keeps them in the
result store too (``ResultBackend.add_revoked``, with an end ``worker_revoke_expires``
seconds on), whoever sent the revoke: the client that calls ``revoke()`` records them, and
so does each worker that hears a revoke broadcast (a Celery client's records nothing), so a
worker that starts later loads them before it runs its first task. A store that keeps
nothing by id (``rpc://``, ``disabled://``) leaves revokes in memory, as Celery's.

A revoked task is refused when its message comes (again when a message held for its ETA
comes back): stored REVOKED, its chord part counted, acknowledged. ``terminate=True`` also
stops a run in progress here: an ``async def`` task is cancelled at once (it sees
``CancelledError`` at the ``await`` it is suspended in); a plain ``def`` task's thread gets
an exception at its next Python bytecode, as a time limit reaches it (code stuck in a C call
is reached only when the call returns). The run ends REVOKED (``terminated``). Celery's
signal names are accepted and not used: there is no process per task to signal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.errors import BrokerError, TaskRevokedError
from celeriac.protocol.records import exception_to_dict
from celeriac.worker.commands import ControlContext, command
from celeriac.worker.hooks import WorkerHook

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: States a revoke may overwrite with REVOKED: nobody has started the task (Celery 5.7's).
NOT_STARTED = frozenset({states.PENDING, states.RECEIVED, states.RETRY, "REJECTED"})
#: How long the first task waits for the revoked ids to load before running anyway.
LOAD_TIMEOUT = 10.0


class Revokes(WorkerHook):
    """A worker's revoked ids (and stamped headers), loaded from the result store when it
    starts; a hook only for that start."""

    def __init__(self, expires: float) -> None:
        self.expires = expires
        #: id -> unix time its revoke ends, in the order they were revoked.
        self._until: dict[str, float] = {}
        #: Stamped-header revokes (``revoke_by_stamped_headers``): header -> values.
        self._stamps: dict[str, set[str]] = {}
        #: Runs being terminated: their handlers were cancelled for that.
        self.terminating: set[str] = set()
        self.loaded = asyncio.Event()
        self._loading: asyncio.Task[None] | None = None

    def worker_started(self, worker: Worker) -> None:
        self._loading = asyncio.get_running_loop().create_task(self._load(worker))

    async def _load(self, worker: Worker) -> None:
        backend = worker.conn.backend if worker.conn is not None else None
        try:
            if backend is not None and backend.keeps_revokes:
                kept = await backend.revoked()
                for task_id, until in kept.items():
                    self._until[task_id] = max(until, self._until.get(task_id, 0.0))
                if kept:
                    logger.info("%s: %d revoked task(s) on record", worker.hostname, len(kept))
        except BrokerError as exc:
            logger.warning(
                "%s: could not read the revoked tasks from %s (%s): only revokes broadcast"
                " from now on are honoured",
                worker.hostname,
                backend.describe() if backend is not None else "the result store",
                exc,
            )
        finally:
            self.loaded.set()

    async def ready(self) -> None:
        """Once the revoked ids are loaded (the first tasks wait for it, at most a while)."""
        if not self.loaded.is_set():
            try:
                await asyncio.wait_for(self.loaded.wait(), LOAD_TIMEOUT)
            except TimeoutError:
                logger.warning("the revoked tasks took over %g s to load: going on", LOAD_TIMEOUT)
                self.loaded.set()

    def is_revoked(self, task_id: str, stamps: dict[str, Any] | None = None) -> bool:
        """Whether ``task_id`` (or one of its stamps) is revoked now."""
        until = self._until.get(task_id)
        if until is not None:
            if until > time.time():
                return True
            del self._until[task_id]
        if stamps and self._stamps:
            for header, values in self._stamps.items():
                if header in stamps and _as_set(stamps[header]) & values:
                    return True
        return False

    def add(self, task_ids: Iterable[str], until: float | None = None) -> float:
        """Revoke ``task_ids`` here until ``until`` (default: ``expires`` from now)."""
        until = until if until is not None else time.time() + self.expires
        for task_id in task_ids:
            self._until.pop(task_id, None)  # moved to the end: the latest revoked last
            self._until[task_id] = until
        return until

    def add_stamps(self, headers: dict[str, Any]) -> None:
        for header, values in headers.items():
            self._stamps.setdefault(str(header), set()).update(_as_set(values))

    def ids(self) -> list[str]:
        """The ids revoked now, the earliest revoked first."""
        now = time.time()
        return [task_id for task_id, until in self._until.items() if until > now]


def _as_set(value: Any) -> set[str]:
    if isinstance(value, list | tuple | set | frozenset):
        return {str(v) for v in value}
    return {str(value)}


def _ids(task_id: Any) -> list[str]:
    """``task_id`` as Celery's revoke sends it: one id, or a list of them."""
    if task_id is None:
        return []
    if isinstance(task_id, str):
        return [task_id]
    return [str(t) for t in task_id]


def revokes_of(context: ControlContext) -> Revokes:
    return context.worker.revokes


@command("control")
async def revoke(
    context: ControlContext,
    task_id: Any = None,
    terminate: bool = False,
    signal: str | None = None,
) -> dict[str, str]:
    """Revoke tasks by id (one or a list): they will not run; with ``terminate``, a run in
    progress here is stopped too."""
    ids = list(dict.fromkeys(_ids(task_id)))
    registry = revokes_of(context)
    until = registry.add(ids)
    await _record(context, ids, until)
    if terminate:
        stopped = terminate_runs(context, ids)
        if not stopped:
            return {"ok": "terminate: tasks unknown"}
        return {"ok": f"terminate: {', '.join(stopped)}"}
    logger.info("%s: tasks flagged as revoked: %s", context.hostname, ", ".join(ids))
    return {"ok": f"tasks {set(ids)} flagged as revoked"}


@command("control")
async def terminate(context: ControlContext, signal: str | None = None, task_id: Any = None) -> Any:
    """Revoke tasks and stop their runs in progress here."""
    return await revoke(context, task_id, terminate=True, signal=signal)


@command("control")
def revoke_by_stamped_headers(
    context: ControlContext, headers: Any = None, terminate: bool = False, signal: str | None = None
) -> dict[str, str]:
    """Revoke the tasks whose stamped headers carry these values (kept in this worker's
    memory, as Celery's, not in the result store)."""
    if isinstance(headers, list):
        headers = dict(str(h).split("=", 1) for h in headers if "=" in str(h))
    headers = dict(headers or {})
    registry = revokes_of(context)
    registry.add_stamps(headers)
    if not terminate:
        return {"ok": f"headers {headers} flagged as revoked, but not terminated"}
    matched = [
        running.request.id
        for running in context.worker.running.active()
        if registry.is_revoked("", (running.request.headers or {}).get("stamps"))
    ]
    if not terminate_runs(context, matched):
        return {"ok": f"headers {headers} were not terminated"}
    return {"ok": f"headers {headers} revoked"}


@command("inspect")
def revoked(context: ControlContext) -> list[str]:
    """The ids revoked in this worker, the earliest first."""
    return revokes_of(context).ids()


def terminate_runs(context: ControlContext, task_ids: Iterable[str]) -> list[str]:
    """Stop the runs of ``task_ids`` in progress here; the ids stopped."""
    registry = revokes_of(context)
    stopped = []
    for task_id in task_ids:
        found = context.worker.running.find(task_id)
        handler = getattr(found, "handler", None)
        if handler is None or handler.done():
            continue
        registry.terminating.add(task_id)
        handler.cancel()
        stopped.append(task_id)
        logger.info("%s: terminating %s", context.hostname, task_id)
    return stopped


async def _record(context: ControlContext, ids: list[str], until: float) -> None:
    """Keep the revoke in the result store, and store REVOKED for the ids nobody started
    (their waiters wake with TaskRevokedError), as Celery 5.7 does."""
    backend = context.conn.backend
    try:
        await backend.add_revoked(ids, until)
        for task_id in ids:
            if context.worker.running.find(task_id) is not None:
                continue
            meta = await backend.get(task_id)
            if (meta["status"] if meta else states.PENDING) not in NOT_STARTED:
                continue
            await context.worker.app.store_state(
                task_id,
                states.REVOKED,
                exception_to_dict(TaskRevokedError("revoked")),
                backend=backend,
            )
    except (BrokerError, NotImplementedError) as exc:
        logger.warning("%s: could not record the revoke of %s: %s", context.hostname, ids, exc)
