"""What happens to one delivery: parse, check, run, record the outcome, settle the message.

Bad input never reaches the task and never stops the worker: a malformed message, an
unregistered name or arguments that do not fit the function each give one log line and a
dead letter (plus a FAILURE record when the task id is known, so callers stop waiting).

An outcome the result store cannot take now is no reason to run a task again. A store that
raises :class:`~celeriac.errors.BackendUnreachable` is tried again with backoff (doubling,
capped at ``STORE_RETRY_MAX_DELAY``) while the task's message stays held; the worker logs one
line when storing starts failing and one when it works again. A graceful stop waits for such
stores as for running tasks, up to ``worker_shutdown_timeout``; one still not stored then is
given up with a log line, and its message goes back to the queue unacknowledged (at-least-once:
the task runs again). A record the store refuses (:class:`~celeriac.errors.ResultRejected`:
over ``result_max_size``, too large for the store, out of memory) is not retried: a FAILURE
that says why is stored instead, or, if even that is refused, the task is logged.

When the broker loses a held message with its connection (RabbitMQ puts it back, the outage
that keeps the result store away may be the same one), the copy it redelivers is not run
again by this worker: it waits for the first run's outcome to be stored, then is acked.

A message that is a canvas step (its embed names a chain, callbacks, errbacks or a chord)
goes through :class:`~celeriac.worker.canvas.CanvasSteps` too, at the points its module doc
lists; one whose embed is malformed is dead-lettered before it runs.

A task that calls ``self.replace(sig)`` (:class:`~celeriac.errors.Replace`) ends without a
record of its own: the replacement, frozen with the task's id
(:func:`~celeriac.task.replacement`), is published before the message is acknowledged,
and its result is stored under that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from celeriac import _state, states
from celeriac.canvas.publish import publish, signatures_to_wire
from celeriac.connections import Connection
from celeriac.errors import (
    BackendUnreachable,
    CanvasError,
    ChordsNotSupported,
    NotRegistered,
    ProtocolError,
    Replace,
    ResultRejected,
    Retry,
    TaskRevokedError,
)
from celeriac.protocol import canvas as canvas_protocol
from celeriac.protocol import message as protocol
from celeriac.protocol.message import TaskMessage
from celeriac.protocol.records import exception_to_dict
from celeriac.task import Request, Task, replacement
from celeriac.transports.broker import Delivery
from celeriac.transports.urls import redacted
from celeriac.worker import builtins, limits
from celeriac.worker.canvas import CanvasSteps, Embed, carries_canvas, read_embed
from celeriac.worker.rate_limit_gate import RateGate

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: Importing them registers Celery's ``celery.*`` tasks on every app a worker may run.
BUILTINS = builtins

#: With ``ignore_result`` these states are not written (RETRY and PROGRESS still are).
_NOT_STORED_WHEN_IGNORED = states.READY_STATES | {states.STARTED}
PROGRESS = states.PROGRESS

#: The state a task that replaced itself ends in, for hooks (Celery's ``IGNORED``): never
#: stored, its replacement's result is.
REPLACED = "IGNORED"

#: An ETA this close is run now rather than deferred (clock skew, rounding).
ETA_SLACK = 0.005

#: Backoff between stores of an outcome the result store could not take: from the first
#: delay, doubling, up to the cap (each with +-25% jitter, so held results spread out).
STORE_RETRY_FIRST_DELAY = 0.05
STORE_RETRY_MAX_DELAY = 5.0
#: Tasks whose outcome was stored only after an outage, remembered (up to this many) so a
#: copy of their message the broker redelivers is acked, not run again.
REMEMBERED_LATE_STORES = 10_000

#: A task run, as its copies know it: the message's id, retry count and replacement depth
#: (the last step of a task's ``self.replace()`` takes the task's id, one level deeper: it is
#: no copy of the task, and must not wait for it).
_RunKey = tuple[str, int, int]
#: What storing a state can fail with, short of an outage: the state cannot be encoded, or the
#: store refused it.
_NOT_STORABLE = (TypeError, ValueError, ResultRejected)


class Execution:
    """Handles deliveries for one worker: the per-message half of the worker."""

    def __init__(self, worker: Worker, conn: Connection, executor: Executor) -> None:
        self.worker = worker
        self.app = worker.app
        self.broker = conn.broker
        self.backend = conn.backend
        self.executor = executor
        self.conn = conn
        self.hooks = worker.hooks
        self._outage = _StoreOutage(conn.backend.url)
        #: Tasks running here (or storing their outcome), each with the futures of the
        #: redelivered copies waiting for it (None until one comes).
        self._runs: dict[_RunKey, list[asyncio.Future[bool]] | None] = {}
        #: Tasks whose outcome was stored after an outage (see REMEMBERED_LATE_STORES).
        self._stored_late: OrderedDict[_RunKey, None] = OrderedDict()
        self.canvas = CanvasSteps(self.app, conn, executor)
        self.rate_gate = RateGate(worker.rate_limits, conn.broker, conn.backend)
        #: Whether a hook listens to progress (a request then carries a reporter).
        self._progress_heard = "task_progress" in vars(self.hooks)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    async def handle(self, delivery: Delivery, ran: Callable[[], None]) -> None:
        """Settle ``delivery`` exactly once, whatever happens (cancelled: requeued).

        ``ran()`` is called as soon as the task itself has ended, before its outcome is
        stored and its message settled: the worker's concurrency bounds running tasks, not
        the bookkeeping after them. (A delivery whose task never runs frees its slot when
        its handler ends.)
        """
        settled = False
        try:
            settled = await self._handle(delivery, ran)
        finally:
            if not settled:
                await asyncio.shield(self.broker.requeue(delivery))

    async def _handle(self, delivery: Delivery, ran: Callable[[], None]) -> bool:
        limit = self.broker.max_message_size
        if limit and len(delivery.envelope.body) > limit:
            reason = (
                f"message body is {len(delivery.envelope.body)} bytes, over "
                f"broker_max_message_size={limit}"
            )
            logger.error(
                "rejected a message from queue %r: %s (moved to dead letters)",
                delivery.queue,
                reason,
            )
            await self.broker.dead_letter(delivery, reason)
            self.hooks.task_rejected(delivery, reason)
            return True
        try:
            message = protocol.parse_task_message(delivery.envelope, self.worker.accept)
        except ProtocolError as exc:
            logger.error(
                "rejected a malformed message from queue %r: %s (moved to dead letters)",
                delivery.queue,
                exc,
            )
            await self.broker.dead_letter(delivery, f"malformed message: {exc}")
            self.hooks.task_rejected(delivery, f"malformed message: {exc}")
            return True
        canvas: Embed | None = None
        if carries_canvas(message.embed):
            try:
                canvas = read_embed(message)
            except CanvasError as exc:
                await self._malformed_canvas(message, delivery, exc)
                return True
        task = self.app.tasks.get(message.task)
        if task is None:
            reason = (
                f"unregistered task {message.task!r}: import its module in the worker's "
                "app (-A) or fix the name"
            )
            logger.error(
                "task %s[%s] rejected: %s (moved to dead letters)", message.task, message.id, reason
            )
            record = exception_to_dict(NotRegistered(reason))
            await self._store(message, states.FAILURE, record, None)
            if canvas is not None:
                await self.canvas.rejected(message, canvas, record)
            await self.broker.dead_letter(delivery, reason)
            self.hooks.task_rejected(delivery, reason)
            return True
        revokes = self.worker.revokes
        if not revokes.loaded.is_set():
            await revokes.ready()
        if revokes.is_revoked(message.id, message.headers.get("stamps")):
            logger.info("task %s[%s] is revoked: not run", task.name, message.id)
            await self._revoked(message, delivery, canvas, "revoked")
            return True
        now = time.time()
        if message.expires is not None and message.expires.timestamp() <= now:
            logger.info(
                "task %s[%s] expired at %s: revoked",
                task.name,
                message.id,
                message.expires.isoformat(),
            )
            await self._revoked(message, delivery, canvas, "expired")
            return True
        if message.eta is not None and message.eta.timestamp() > now + ETA_SLACK:
            await self.broker.defer(delivery, message.eta.timestamp())
            return True
        gate = self.rate_gate
        if gate.applies(task) and await gate.deferred(task, message.id, delivery):
            return True  # back in the queue until a start is free (never held here)
        return await self._run(task, message, delivery, ran, canvas)

    async def _revoked(
        self, message: TaskMessage, delivery: Delivery, canvas: Embed | None, reason: str
    ) -> None:
        """A task that will not run (revoked, expired): REVOKED stored with Celery's
        reason, its chord part counted, the message acknowledged."""
        record = exception_to_dict(TaskRevokedError(reason))
        await self._store(message, states.REVOKED, record, None)
        if canvas is not None:
            await self.canvas.revoked(message, canvas, record)
        await self.broker.ack(delivery)
        self.hooks.task_revoked(self._request(message, delivery), reason)

    async def _malformed_canvas(
        self, message: TaskMessage, delivery: Delivery, exc: CanvasError
    ) -> None:
        """A message whose embed is malformed: its task does not run; FAILURE under the ids
        it names, the message to the dead letters."""
        reason = f"malformed canvas: {exc}"
        logger.error(
            "task %s[%s] rejected: %s (moved to dead letters)", message.task, message.id, reason
        )
        await self.canvas.malformed(message, exc)
        await self.broker.dead_letter(delivery, reason)
        self.hooks.task_rejected(delivery, reason)

    async def _run(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        ran: Callable[[], None],
        canvas: Embed | None,
    ) -> bool:
        try:
            task.check_arguments(message.args, message.kwargs)
        except TypeError as exc:
            reason = f"wrong arguments for {task.name}{task.call_signature}: {exc}"
            logger.error(
                "task %s[%s] rejected: %s (moved to dead letters)", task.name, message.id, reason
            )
            error = TypeError(reason)
            await self._store(message, states.FAILURE, exception_to_dict(error), None)
            if canvas is not None:
                # As Celery's call raising TypeError: a failure of the task, errbacks too.
                request = self._request(message, delivery)
                await self.canvas.failed(message, canvas, request, error, None)
            await self.broker.dead_letter(delivery, reason)
            self.hooks.task_rejected(delivery, reason)
            return True
        key = _run_key(message)
        # A canvas step may come twice without a redelivery: a worker that died after
        # publishing the next step, before its ack, has that step published again by the
        # copy that runs in its place. A copy of a run in progress here waits for it.
        copy_possible = delivery.redelivered or canvas is not None
        if copy_possible and await self._ran_here(key, task, message, ran):
            await self.broker.ack(delivery)
            return True
        if canvas is not None and await self.canvas.ran_before(message, canvas):
            await self.broker.ack(delivery)
            return True
        if key in self._runs:  # the same message published twice: the first run owns it
            return await self._run_once(task, message, delivery, ran, canvas)
        self._runs[key] = None
        stored = False
        try:
            stored = await self._run_once(task, message, delivery, ran, canvas)
        finally:
            self._ended(key, stored)
        return stored

    async def _ran_here(
        self, key: _RunKey, task: Task[Any, Any], message: TaskMessage, ran: Callable[[], None]
    ) -> bool:
        """Whether a redelivered message is a copy of a run of this worker that stored (or
        is storing) its outcome: the broker put it back when the connection it came on
        dropped, while the task ran or its outcome waited for the result store. The copy
        waits for that outcome; it is not run again."""
        if key in self._stored_late:
            self._stored_late.move_to_end(key)
        elif key in self._runs:
            ran()  # the copy runs nothing: its slot is free at once
            waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            copies = self._runs[key]
            if copies is None:
                copies = self._runs[key] = []
            copies.append(waiting)
            logger.debug(
                "task %s[%s]: a redelivered copy waits for the outcome of its run here",
                task.name,
                message.id,
            )
            if not await waiting:
                return False  # the first run ended without its outcome: this copy runs it
        else:
            return False
        logger.info(
            "task %s[%s]: a redelivered copy of a run of this worker whose outcome is stored:"
            " acknowledged, not run again",
            task.name,
            message.id,
        )
        return True

    def _ended(self, key: _RunKey, stored: bool) -> None:
        """Tell the redelivered copies waiting for this run whether its outcome is stored."""
        for waiting in self._runs.pop(key, None) or ():
            if not waiting.done():
                waiting.set_result(stored)

    async def _run_once(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        ran: Callable[[], None],
        canvas: Embed | None,
    ) -> bool:
        acks_late = task.acks_late
        if not acks_late:
            await self.broker.ack(delivery)
        request = self._request(message, delivery)
        logger.info("task %s[%s] received", task.name, message.id)
        hooks = self.hooks
        hooks.task_received(request)
        if self.app.conf.task_track_started:
            await self._store(
                message,
                states.STARTED,
                {"pid": os.getpid(), "hostname": self.worker.hostname},
                None,
                event=True,
            )
        hooks.task_started(request)
        started = time.perf_counter()
        state: str | None = None  # until the outcome is settled
        try:
            try:
                try:
                    value = await self._call(task, message, request)
                finally:
                    ran()
            except (Retry, Replace) as signal:
                runtime = time.perf_counter() - started
                outcome = await self._signalled(
                    task, message, delivery, signal, request, runtime, canvas
                )
            except asyncio.CancelledError:
                if not self._terminated(message.id):
                    raise  # the worker stops: the message goes back
                outcome = await self._end_terminated(task, message, request, canvas)
            except Exception as exc:
                outcome = await self._failed(
                    task, message, delivery, exc, request, time.perf_counter() - started, canvas
                )
            else:
                runtime = time.perf_counter() - started
                succeeded = await self._succeeded(
                    task, message, delivery, request, value, runtime, canvas
                )
                if succeeded is None:  # its canvas was malformed: failed, dead-lettered
                    state = states.FAILURE
                    return True
                outcome = succeeded
            if acks_late:
                await self.broker.ack(delivery)
            state = outcome
        finally:
            hooks.task_ended(request, state, time.perf_counter() - started)
        return True

    async def _succeeded(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        request: Request,
        value: Any,
        runtime: float,
        canvas: Embed | None,
    ) -> str | None:
        """The task returned ``value``: what follows it published, SUCCESS stored. None
        when its canvas turned out malformed (the task failed; its message is in the dead
        letters)."""
        children = None
        if canvas is not None:
            try:  # Celery's order: the next steps are published, then SUCCESS stored
                children = await self.canvas.succeeded(message, canvas, value)
            except CanvasError as exc:
                await self._failed(task, message, delivery, exc, request, runtime, canvas)
                # Where the message was held (acks_late), it goes to the dead letters.
                await self.broker.dead_letter(delivery, f"malformed canvas: {exc}")
                return None
        self.hooks.task_succeeded(request, value, runtime)

        def succeeded() -> None:
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "task %s[%s] succeeded in %.4fs: %s",
                    task.name,
                    message.id,
                    runtime,
                    _short(value),
                )

        # Logged once the result is stored, or held through an outage (the task did
        # succeed); a result the store refused is logged as such instead.
        await self._store(message, states.SUCCESS, value, None, stored=succeeded, children=children)
        if canvas is not None:
            await self.canvas.stored_success(message, canvas, value)
        return states.SUCCESS

    async def _end_terminated(
        self, task: Task[Any, Any], message: TaskMessage, request: Request, canvas: Embed | None
    ) -> str:
        """A run stopped by ``revoke(terminate=True)``: REVOKED (``terminated``), its chord
        part counted."""
        logger.warning("task %s[%s] terminated (revoked)", task.name, message.id)
        record = exception_to_dict(TaskRevokedError("terminated"))
        await self._store(message, states.REVOKED, record, None)
        if canvas is not None:
            await self.canvas.revoked(message, canvas, record)
        self.hooks.task_revoked(request, "terminated")
        return states.REVOKED

    def _terminated(self, task_id: str) -> bool:
        """Whether this cancellation is a revoke's ``terminate`` of the run (the run then
        ends REVOKED), not the worker stopping; the cancellation is taken back if so."""
        terminating = self.worker.revokes.terminating
        if task_id not in terminating:
            return False
        terminating.discard(task_id)
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        return True

    async def _call(self, task: Task[Any, Any], message: TaskMessage, request: Request) -> Any:
        hard = message.time_limit or task.time_limit
        soft = message.soft_time_limit or task.soft_time_limit
        request_token = _state.current_request.set(request)
        inside_token = _state.inside_task.set(True)
        try:
            if task.streams and task.is_async:
                return await limits.run_async(self._drive_async(task, message), hard, soft)
            if task.streams:
                drive = self._sync_driver(task, message, asyncio.get_running_loop())
                return await limits.run_sync(drive, self.executor, hard, soft)
            if task.is_async:
                return await limits.run_async(task.run(*message.args, **message.kwargs), hard, soft)
            return await limits.run_sync(
                lambda: task.run(*message.args, **message.kwargs), self.executor, hard, soft
            )
        finally:
            _state.inside_task.reset(inside_token)
            _state.current_request.reset(request_token)

    async def _drive_async(self, task: Task[Any, Any], message: TaskMessage) -> Any:
        """Run an async generator task: each value it yields is stored as PROGRESS (the next
        one is asked for once that is stored); the last one is the result."""
        last = None
        generator = task.run(*message.args, **message.kwargs)
        request = _state.current_request.get()
        try:
            async for value in generator:
                await self._store(message, PROGRESS, value, None, event=True)
                if request is not None and request.on_progress is not None:
                    request.on_progress(request, PROGRESS, value)
                last = value
        finally:
            await generator.aclose()
        return last

    def _sync_driver(
        self, task: Task[Any, Any], message: TaskMessage, loop: asyncio.AbstractEventLoop
    ) -> Callable[[], Any]:
        """A function for the task's thread that runs a generator task, storing each value
        it yields (on the loop, waiting until it is stored); its result is what the
        generator returns, or else the last value it yielded."""

        def drive() -> Any:
            last = None
            generator = task.run(*message.args, **message.kwargs)
            request = _state.current_request.get()
            with contextlib.closing(generator):
                while True:
                    try:
                        value = next(generator)
                    except StopIteration as stop:
                        return last if stop.value is None else stop.value
                    stored = self._store(message, PROGRESS, value, None, event=True)
                    asyncio.run_coroutine_threadsafe(stored, loop).result()
                    if request is not None and request.on_progress is not None:
                        request.on_progress(request, PROGRESS, value)
                    last = value

        return drive

    async def _failed(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        exc: Exception,
        request: Request,
        runtime: float,
        canvas: Embed | None = None,
    ) -> str:
        """Retry the task if it asks to be retried on ``exc``, else store its FAILURE (then
        fail what follows it in its canvas); the state it ends in."""
        if task.options.autoretry_for and isinstance(exc, task.options.autoretry_for):
            request_token = _state.current_request.set(request)
            try:
                task.retry(exc=exc, countdown=task.backoff_countdown(message.retries))
            except Retry as retry:
                await self._retry(task, message, delivery, retry, request)
                return states.RETRY
            except Exception as final:
                exc = final
            finally:
                _state.current_request.reset(request_token)
        tb = "".join(traceback.format_exception(exc))
        logger.error(  # with the traceback, as Celery logs it
            "task %s[%s] failed: %s: %s",
            task.name,
            message.id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        self.hooks.task_failed(request, exc, runtime)
        await self._store(message, states.FAILURE, exception_to_dict(exc), tb)
        if canvas is not None:
            await self.canvas.failed(message, canvas, request, exc, tb)
        return states.FAILURE

    async def _signalled(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        signal: Retry | Replace,
        request: Request,
        runtime: float,
        canvas: Embed | None,
    ) -> str:
        """The task raised ``self.retry()`` or ``self.replace()``: the state it ends in."""
        if isinstance(signal, Retry):
            await self._retry(task, message, delivery, signal, request)
            return states.RETRY
        return await self._replaced(task, message, delivery, signal, request, runtime, canvas)

    async def _replaced(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        replaced: Replace,
        request: Request,
        runtime: float,
        canvas: Embed | None,
    ) -> str:
        """``self.replace(sig)``: publish the replacement, from this task (its parent), and
        store nothing; the state it ends in. A replacement that cannot be applied (a chord
        the result store cannot join...) fails the task instead."""
        try:
            new = replacement(request, signatures_to_wire(self.broker, replaced.sig), self.app)
            expansion = canvas_protocol.apply(
                dict(new), parent_id=message.id, root_id=message.root_id or message.id
            )
            await publish(self.app, expansion, conn=self.conn, from_wire=True)
        except (CanvasError, ChordsNotSupported) as exc:
            return await self._failed(task, message, delivery, exc, request, runtime, canvas)
        logger.info(
            "task %s[%s] replaced by %s", task.name, message.id, _short(replaced.sig["task"])
        )
        return REPLACED

    async def _retry(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        retry: Retry,
        request: Request,
    ) -> None:
        """Celery's order: store RETRY, publish the same id with retries+1 and an eta, ack."""
        exc = retry.exc or retry
        tb = "".join(traceback.format_exception(exc)) if retry.exc else None
        await self._store(message, states.RETRY, exception_to_dict(exc), tb, event=True)
        envelope = protocol.build_task_message(
            message.task,
            message.id,
            message.args,
            message.kwargs,
            serializer=self.app.conf.task_serializer,
            eta=retry.when,
            expires=message.expires,
            retries=message.retries + 1,
            time_limit=message.time_limit,
            soft_time_limit=message.soft_time_limit,
            root_id=message.root_id,
            parent_id=message.id,
            group=message.group,
            group_index=message.group_index,
            ignore_result=message.ignore_result,
            origin=self.worker.hostname,
            reply_to=message.reply_to or "",
            priority=delivery.priority,
            headers=_custom_headers(message),
            replaced_task_nesting=_nesting(message),
            **_embed(message),
        )
        await self.broker.publish(
            delivery.queue, envelope, priority=delivery.priority, eta=retry.when.timestamp()
        )
        logger.info(
            "task %s[%s] retry %d in %.1fs: %s",
            task.name,
            message.id,
            message.retries + 1,
            max(0.0, retry.when.timestamp() - time.time()),
            retry.exc if retry.exc is not None else "retry requested",
        )
        self.hooks.task_retried(request, retry.exc, retry.when)

    async def _store(
        self,
        message: TaskMessage,
        state: str,
        result: Any,
        tb: str | None,
        *,
        event: bool = False,
        stored: Callable[[], None] | None = None,
        children: list[Any] | None = None,
    ) -> None:
        """Store a state of the task, through outages (see the module doc). One that cannot
        be stored ever fails the task if it is a PROGRESS value; a final one is replaced by
        a FAILURE that says why, so callers stop waiting; any other is logged. ``stored()``
        is called once the state is stored, needs no storing (``ignore_result``), or is held
        to be stored after an outage: never for a state the store refused."""
        if message.ignore_result and state in _NOT_STORED_WHEN_IGNORED:
            if stored is not None:
                stored()
            return
        try:
            try:  # the common case first, without the retry loop's coroutine
                await self._store_state(message, state, result, tb, event, children)
            except BackendUnreachable as exc:
                if stored is not None:
                    stored()
                await self._until_stored(message, state, result, tb, event, exc, children)
                return
            if self._outage.since is not None:
                self._outage.stored(message)
        except _NOT_STORABLE as exc:
            if state == PROGRESS:
                raise  # a progress value that cannot be stored fails the task
            await self._store_instead(message, state, exc)
            return
        if stored is not None:
            stored()

    async def _store_instead(self, message: TaskMessage, state: str, exc: Exception) -> None:
        if state not in states.READY_STATES:
            logger.error(
                "task %s[%s]: its %s state could not be stored: %s",
                message.task,
                message.id,
                state,
                exc,
            )
            return
        logger.error(
            "task %s[%s] %s, but its %s could not be stored (%s: %s): storing a FAILURE that"
            " says why instead",
            message.task,
            message.id,
            "succeeded" if state == states.SUCCESS else "ended",
            "result" if state == states.SUCCESS else f"{state} state",
            type(exc).__name__,
            exc,
        )
        why = (
            exc if isinstance(exc, ResultRejected) else TypeError(f"result not serializable: {exc}")
        )
        failure = exception_to_dict(why)
        try:
            try:
                await self._store_state(message, states.FAILURE, failure, None, False)
            except BackendUnreachable as exc:
                await self._until_stored(message, states.FAILURE, failure, None, False, exc)
        except _NOT_STORABLE as again:
            logger.error(
                "task %s[%s]: its FAILURE could not be stored either (%s: %s): callers waiting"
                " for it will time out",
                message.task,
                message.id,
                type(again).__name__,
                again,
            )

    def _store_state(
        self,
        message: TaskMessage,
        state: str,
        result: Any,
        tb: str | None,
        event: bool,
        children: list[Any] | None = None,
    ) -> Coroutine[Any, Any, None]:
        """The store of one state of the task (its coroutine, not awaited here)."""
        return self.app.store_state(
            message.id,
            state,
            result,
            traceback=tb,
            parent_id=message.parent_id,
            group_id=message.group,
            event=event,
            reply_to=message.reply_to,
            backend=self.backend,
            children=children,
        )

    async def _until_stored(
        self,
        message: TaskMessage,
        state: str,
        result: Any,
        tb: str | None,
        event: bool,
        error: BackendUnreachable,
        children: list[Any] | None = None,
    ) -> None:
        """After a store failed with ``error``: the store again and again, with backoff,
        while the store is unreachable (see the module doc); a cancellation (the worker
        stopping) gives up, with a line."""
        failures = 0
        while True:
            failures += 1
            self._outage.failed(message, state, error)
            delay = STORE_RETRY_FIRST_DELAY * 2 ** min(failures - 1, 16)
            delay = min(delay * random.uniform(0.75, 1.25), STORE_RETRY_MAX_DELAY)
            try:
                await asyncio.sleep(delay)
                await self._store_state(message, state, result, tb, event, children)
            except BackendUnreachable as exc:
                error = exc
                continue
            except asyncio.CancelledError:
                _given_up(message, state)
                raise
            if self._outage.since is not None:  # else another store said so already
                self._outage.stored(message)
            self._remember_late(message)
            return

    def _remember_late(self, message: TaskMessage) -> None:
        self._stored_late[_run_key(message)] = None
        if len(self._stored_late) > REMEMBERED_LATE_STORES:
            self._stored_late.popitem(last=False)

    def _request(self, message: TaskMessage, delivery: Delivery) -> Request:
        request = self._new_request(message, delivery)
        if self._progress_heard:
            request.on_progress = self._progress
        return request

    def _progress(self, request: Request, state: str, info: Any) -> None:
        """A request's progress reporter: the hooks are called on the worker's loop,
        whichever thread the task reports from."""
        if threading.get_ident() == self._loop_thread:
            self.hooks.task_progress(request, state, info)
        else:
            self._loop.call_soon_threadsafe(self.hooks.task_progress, request, state, info)

    def _new_request(self, message: TaskMessage, delivery: Delivery) -> Request:
        return Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            eta=message.eta,
            expires=message.expires,
            hostname=self.worker.hostname,
            delivery_info={
                "exchange": "",
                "routing_key": delivery.queue,
                "priority": delivery.priority,
                "redelivered": delivery.redelivered,
            },
            root_id=message.root_id,
            parent_id=message.parent_id,
            group=message.group,
            origin=message.origin,
            reply_to=message.reply_to,
            ignore_result=message.ignore_result,
            headers=message.headers,
            time_limit=message.time_limit,
            soft_time_limit=message.soft_time_limit,
            group_index=message.group_index,
            callbacks=message.embed.get("callbacks"),
            errbacks=message.embed.get("errbacks"),
            chain=message.embed.get("chain"),
            chord=message.embed.get("chord"),
            replaced_task_nesting=_nesting(message),
        )


class _StoreOutage:
    """The worker's view of its result store being out of reach: one line when storing
    starts failing and one when a store works again, whatever the number of held outcomes
    and attempts in between."""

    def __init__(self, url: str) -> None:
        self.url = redacted(url)
        self.since: float | None = None

    def failed(self, message: TaskMessage, state: str, exc: BaseException) -> None:
        if self.since is not None:
            return
        self.since = time.monotonic()
        logger.warning(
            "cannot store the %s state of task %s[%s] in the result store %s (%s): the worker"
            " keeps it (and any other it cannot store) and stores it again with backoff; the"
            " task's message stays held and the task does not run again",
            state,
            message.task,
            message.id,
            self.url,
            exc,
        )

    def stored(self, message: TaskMessage) -> None:
        assert self.since is not None
        logger.warning(
            "stored results in the result store %s again, after %.1f s of failures (task"
            " %s[%s] first); held outcomes follow as their backoff ends",
            self.url,
            time.monotonic() - self.since,
            message.task,
            message.id,
        )
        self.since = None


def _given_up(message: TaskMessage, state: str) -> None:
    """A held outcome dropped by the worker's stop (after ``worker_shutdown_timeout``)."""
    logger.warning(
        "task %s[%s]: its %s state was not stored before the worker stopped (the result store"
        " is still unreachable): given up; its message, unless acked before the task ran, goes"
        " back to the queue and the task runs again (at-least-once)",
        message.task,
        message.id,
        state,
    )


def _custom_headers(message: TaskMessage) -> dict[str, Any]:
    return {k: v for k, v in message.headers.items() if k not in protocol.STANDARD_HEADERS}


def _run_key(message: TaskMessage) -> _RunKey:
    return message.id, message.retries, _nesting(message)


def _nesting(message: TaskMessage) -> int:
    """The message's ``replaced_task_nesting`` header (0 when absent or not a count)."""
    value = message.headers.get("replaced_task_nesting")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _embed(message: TaskMessage) -> dict[str, Any]:
    embed = message.embed or {}
    return {key: embed.get(key) for key in protocol.EMBED_KEYS}


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
