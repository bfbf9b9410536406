"""What happens to one delivery: parse, check, run, record the outcome, settle the message.

Bad input never reaches the task and never stops the worker: a malformed message, an
unregistered name or arguments that do not fit the function each give one log line and a
dead letter (plus a FAILURE record when the task id is known, so callers stop waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from celeriac import protocol, states
from celeriac.app import Connection
from celeriac.brokers.base import Delivery
from celeriac.errors import NotRegistered, ProtocolError, Retry, TaskRevokedError
from celeriac.protocol import TaskMessage
from celeriac.result import inside_task
from celeriac.resultmeta import exception_to_dict
from celeriac.task import Request, Task, current_request
from celeriac.worker import limits

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: With ``ignore_result`` these states are not written (RETRY and PROGRESS still are).
_NOT_STORED_WHEN_IGNORED = states.READY_STATES | {states.STARTED}
PROGRESS = states.PROGRESS

#: An ETA this close is run now rather than deferred (clock skew, rounding).
ETA_SLACK = 0.005


class Execution:
    """Handles deliveries for one worker: the per-message half of the worker."""

    def __init__(self, worker: Worker, conn: Connection, executor: Executor) -> None:
        self.worker = worker
        self.app = worker.app
        self.broker = conn.broker
        self.backend = conn.backend
        self.executor = executor

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
            await self._store(
                message, states.FAILURE, exception_to_dict(NotRegistered(reason)), None
            )
            await self.broker.dead_letter(delivery, reason)
            return True
        now = time.time()
        if message.expires is not None and message.expires.timestamp() <= now:
            logger.info(
                "task %s[%s] expired at %s: revoked",
                task.name,
                message.id,
                message.expires.isoformat(),
            )
            await self._store(
                message, states.REVOKED, exception_to_dict(TaskRevokedError("expired")), None
            )
            await self.broker.ack(delivery)
            return True
        if message.eta is not None and message.eta.timestamp() > now + ETA_SLACK:
            await self.broker.defer(delivery, message.eta.timestamp())
            return True
        return await self._run(task, message, delivery, ran)

    async def _run(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        ran: Callable[[], None],
    ) -> bool:
        try:
            task.check_arguments(message.args, message.kwargs)
        except TypeError as exc:
            reason = f"wrong arguments for {task.name}{task.signature}: {exc}"
            logger.error(
                "task %s[%s] rejected: %s (moved to dead letters)", task.name, message.id, reason
            )
            await self._store(message, states.FAILURE, exception_to_dict(TypeError(reason)), None)
            await self.broker.dead_letter(delivery, reason)
            return True
        acks_late = task.acks_late
        if not acks_late:
            await self.broker.ack(delivery)
        request = self._request(message, delivery)
        logger.info("task %s[%s] received", task.name, message.id)
        if self.app.conf.task_track_started:
            await self._store(
                message,
                states.STARTED,
                {"pid": os.getpid(), "hostname": self.worker.hostname},
                None,
                event=True,
            )
        started = time.perf_counter()
        try:
            try:
                value = await self._call(task, message, request)
            finally:
                ran()
        except Retry as retry:
            await self._retry(task, message, delivery, retry)
        except Exception as exc:
            await self._failed(task, message, delivery, exc, request)
        else:
            if logger.isEnabledFor(logging.INFO):
                runtime = time.perf_counter() - started
                logger.info(
                    "task %s[%s] succeeded in %.4fs: %s",
                    task.name,
                    message.id,
                    runtime,
                    _short(value),
                )
            await self._store(message, states.SUCCESS, value, None)
        if acks_late:
            await self.broker.ack(delivery)
        return True

    async def _call(self, task: Task[Any, Any], message: TaskMessage, request: Request) -> Any:
        hard = message.time_limit or task.time_limit
        soft = message.soft_time_limit or task.soft_time_limit
        request_token = current_request.set(request)
        inside_token = inside_task.set(True)
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
            inside_task.reset(inside_token)
            current_request.reset(request_token)

    async def _drive_async(self, task: Task[Any, Any], message: TaskMessage) -> Any:
        """Run an async generator task: each value it yields is stored as PROGRESS (the next
        one is asked for once that is stored); the last one is the result."""
        last = None
        generator = task.run(*message.args, **message.kwargs)
        try:
            async for value in generator:
                await self._store(message, PROGRESS, value, None, event=True)
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
            with contextlib.closing(generator):
                while True:
                    try:
                        value = next(generator)
                    except StopIteration as stop:
                        return last if stop.value is None else stop.value
                    stored = self._store(message, PROGRESS, value, None, event=True)
                    asyncio.run_coroutine_threadsafe(stored, loop).result()
                    last = value

        return drive

    async def _failed(
        self,
        task: Task[Any, Any],
        message: TaskMessage,
        delivery: Delivery,
        exc: Exception,
        request: Request,
    ) -> None:
        if task.options.autoretry_for and isinstance(exc, task.options.autoretry_for):
            request_token = current_request.set(request)
            try:
                task.retry(exc=exc, countdown=task.backoff_countdown(message.retries))
            except Retry as retry:
                await self._retry(task, message, delivery, retry)
                return
            except Exception as final:
                exc = final
            finally:
                current_request.reset(request_token)
        tb = "".join(traceback.format_exception(exc))
        logger.error("task %s[%s] failed: %s: %s", task.name, message.id, type(exc).__name__, exc)
        await self._store(message, states.FAILURE, exception_to_dict(exc), tb)

    async def _retry(
        self, task: Task[Any, Any], message: TaskMessage, delivery: Delivery, retry: Retry
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

    async def _store(
        self,
        message: TaskMessage,
        state: str,
        result: Any,
        tb: str | None,
        *,
        event: bool = False,
    ) -> None:
        if message.ignore_result and state in _NOT_STORED_WHEN_IGNORED:
            return
        parent_id, group_id = message.parent_id, message.group
        try:
            await self.app.store_state(
                message.id,
                state,
                result,
                traceback=tb,
                parent_id=parent_id,
                group_id=group_id,
                event=event,
                reply_to=message.reply_to,
                backend=self.backend,
            )
        except (TypeError, ValueError) as exc:
            if event:
                raise  # a progress value that cannot be stored fails the task
            logger.error(
                "task %s[%s]: result could not be stored: %s", message.task, message.id, exc
            )
            fallback = exception_to_dict(TypeError(f"result not serializable: {exc}"))
            await self.app.store_state(
                message.id,
                states.FAILURE,
                fallback,
                parent_id=parent_id,
                group_id=group_id,
                reply_to=message.reply_to,
                backend=self.backend,
            )

    def _request(self, message: TaskMessage, delivery: Delivery) -> Request:
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
        )


def _custom_headers(message: TaskMessage) -> dict[str, Any]:
    return {k: v for k, v in message.headers.items() if k not in protocol.STANDARD_HEADERS}


def _embed(message: TaskMessage) -> dict[str, Any]:
    embed = message.embed or {}
    return {key: embed.get(key) for key in protocol.EMBED_KEYS}


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
