"""The worker: consume deliveries, run tasks on the loop or in threads, settle messages.

Structure: one consumer task pulls deliveries (the broker bounds them by the prefetch
window) and starts one handler task per delivery, with at most ``concurrency`` tasks
running at once (a handler gives its slot back when its task ends, before the outcome is
stored and the message acked); every handler is held in ``self._running``. Shutdown stops
the consumer first, lets handlers finish for ``shutdown_timeout`` seconds, then cancels the
rest, whose messages go back to the queue.

Delivery is at-least-once: with ``acks_late`` (the default) a message is acknowledged after
its task ends, so a worker that dies mid-task loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from celeriac import _bridge
from celeriac.app import Celery
from celeriac.connections import Connection
from celeriac.errors import BackendUnreachable, BrokerUnreachable
from celeriac.protocol.serialization import resolve_accept
from celeriac.resources import Resources
from celeriac.transports.broker import Delivery
from celeriac.worker.events import WorkerEvents
from celeriac.worker.execution import Execution
from celeriac.worker.hooks import Hooks, WorkerHook
from celeriac.worker.loop_watch import LoopWatch
from celeriac.worker.mailbox import Mailbox
from celeriac.worker.rate_limits import RateLimits
from celeriac.worker.revokes import Revokes
from celeriac.worker.running import RunningRequests
from celeriac.worker.threads import TaskThreads

logger = logging.getLogger("celeriac.worker")
#: The longest the ready line waits for remote control to listen.
READY_WAIT = 5.0
#: The longest a shutdown waits on the broker at each step besides the drain: the consumer
#: giving back what it had not handed out, cancelled tasks being requeued. A broker that
#: stopped answering must not keep the worker from exiting; closing the connection puts
#: back whatever is left.
BROKER_STEP_TIMEOUT = 10.0
#: Waiting for a broker that is out of reach at start: the first retry after this many
#: seconds, each later one twice as late, up to the cap.
START_BACKOFF_FIRST = 0.1
START_BACKOFF_CAP = 5.0


class Worker:
    """Runs the tasks of ``app`` from ``queues`` until stopped (SIGTERM/SIGINT or ``stop()``)."""

    def __init__(
        self,
        app: Celery,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        hostname: str | None = None,
        threads: int | None = None,
        prefetch_multiplier: int | None = None,
        shutdown_timeout: float | None = None,
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
        on_ready: Callable[[], None] | None = None,
        hooks: Sequence[WorkerHook] = (),
    ) -> None:
        """``max_tasks`` / ``max_memory_kib``: stop gracefully after that many tasks, or once
        the process's resident memory passes that many KiB (a pool's supervisor then starts
        a fresh process: ``worker_max_tasks_per_child`` / ``worker_max_memory_per_child``).
        ``on_ready``: called once the consumer runs (a pool's process tells its supervisor
        that a later death is a crash to restart from, not a failure to start).
        ``hooks``: extensions called at each task's and the worker's turning points
        (:mod:`celeriac.worker.hooks`), after the worker's own registry of running tasks."""
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = concurrency or conf.worker_concurrency
        self.hostname = hostname or f"celeriac@{socket.gethostname()}"
        self.threads = threads or conf.effective_worker_threads()
        multiplier = prefetch_multiplier or conf.worker_prefetch_multiplier
        self.prefetch = max(1, self.concurrency * multiplier)
        self.shutdown_timeout = (
            shutdown_timeout if shutdown_timeout is not None else conf.worker_shutdown_timeout
        )
        self.accept = resolve_accept(conf.accept_content)
        #: The handler of each delivery being handled (shutdown waits for them).
        self._running: dict[asyncio.Task[None], Delivery] = {}
        self._stopping: asyncio.Event | None = None
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.on_ready = on_ready
        #: The tasks running in this process (``inspect active``), kept by a hook.
        self.running = RunningRequests()
        #: The task ids this worker refuses (``revoke``), loaded from the store at start.
        self.revokes = Revokes(conf.worker_revoke_expires)
        #: Each task's rate limit here (settings checked now; remote control changes them).
        self.rate_limits = RateLimits(app)
        own: list[WorkerHook] = [self.running, self.revokes]
        #: Remote control (``celery inspect``, Flower, ``app.control``), unless switched off.
        self.mailbox: Mailbox | None = None
        if conf.worker_enable_remote_control:
            self.mailbox = Mailbox(app.clock)
            own.append(self.mailbox)
        #: Events for Flower and ``celery events``: the worker's always, its tasks' when
        #: enabled (``worker_send_task_events``, ``enable_events``).
        self.events = WorkerEvents(app, app.clock)
        own.append(self.events)
        self.hooks = Hooks([*own, *hooks])
        #: The broker and result store, once the worker reached them.
        self.conn: Connection | None = None
        self._slots: asyncio.Semaphore | None = None
        self._execution: Execution | None = None
        self._consumer: asyncio.Task[None] | None = None
        #: Slots being taken out of use (``pool_shrink``) as running tasks free them.
        self._shrinking: set[asyncio.Task[bool]] = set()
        self._signals = 0
        self._failure: BaseException | None = None
        self.processed = 0

    async def run(self) -> None:
        """Consume until asked to stop; returns after a graceful (or forced) shutdown."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._signals:  # stop() came before run(): it still holds
            self._stopping.set()
        self._install_signal_handlers(loop)  # a signal while the broker is away stops too
        try:
            conn = await self._reach_broker()
            if conn is not None:
                self.rate_limits.check_store(conn.backend)  # before consuming anything
                resources = Resources(self.app.resources)
                await resources.start()  # before the first task: none waits for a model
        except BaseException:
            conn = None
            raise
        finally:
            if conn is None:  # failed, or stopped before the broker answered
                self._remove_signal_handlers(loop)
                await self.app._close()
        if conn is None:
            logger.info("%s stopped before its broker answered", self.hostname)
            return
        _bridge.use_loop(loop)
        executor = TaskThreads(self.threads, "celeriac-task")
        execution = Execution(self, conn, executor)
        self._slots = asyncio.Semaphore(self.concurrency)
        self.conn = conn
        self._execution = execution
        consumer = self._consumer = self._start_consumer()
        watching = None
        if self.max_memory_kib:
            watching = loop.create_task(self._watch_memory(self.max_memory_kib))
        watch = self._watch_loop(loop)
        self.hooks.worker_started(self)
        try:
            await self._answering()
            logger.info(
                "%s ready: pid %d, queues %s, concurrency %d, broker %s, results %s",
                self.hostname,
                os.getpid(),
                ",".join(self.queues),
                self.concurrency,
                conn.broker.describe(),
                conn.backend.describe(),
            )
            if self.on_ready is not None:
                self.on_ready()
            await self._stopping.wait()
        finally:
            if watching is not None:
                watching.cancel()
            if watch is not None:
                watch.stop()
            consumer = self._consumer
            assert consumer is not None
            consumer.cancel()
            await self._within("stop consuming", {consumer})
            self.hooks.worker_stopping(self)
            await self._drain()
            await resources.close()  # after the last task
            _bridge.use_loop(None)
            self._remove_signal_handlers(loop)
            executor.shutdown(wait=False, cancel_futures=True)
            await self.app._close()  # the broker writes every ack begun before it closes
            if not consumer.done():  # still stuck on a broker that never answered
                consumer.cancel()
                await self._within("stop consuming", {consumer})
            logger.info("%s stopped after %d tasks", self.hostname, self.processed)
        if self._failure is not None:
            raise self._failure

    async def _answering(self) -> None:
        """Wait (a little) until remote control answers: once the worker says it is ready,
        ``celery inspect`` and Flower must reach it, as they reach a Celery worker then."""
        if self.mailbox is None:
            return
        try:
            await asyncio.wait_for(self.mailbox.ready.wait(), READY_WAIT)
        except TimeoutError:
            logger.warning(
                "%s: remote control is not listening yet after %g s; going on",
                self.hostname,
                READY_WAIT,
            )

    async def _reach_broker(self) -> Connection | None:
        """The app's connection once its broker answers (None: asked to stop first).

        A broker out of reach at start is waited for, as Celery's worker retries on startup,
        with one line saying so: the ready line is only logged once the broker answered, so
        it never claims a worker that cannot consume is ready."""
        assert self._stopping is not None
        attempt = 0
        while True:
            try:
                conn = await self.app.connection()
                await conn.broker.ping()
            except (BrokerUnreachable, BackendUnreachable) as exc:
                if attempt == 0:
                    logger.warning(
                        "%s is not ready: %s; retrying with backoff up to %g s",
                        self.hostname,
                        exc,
                        START_BACKOFF_CAP,
                    )
                delay = min(START_BACKOFF_CAP, START_BACKOFF_FIRST * 2.0 ** min(attempt, 16))
                attempt += 1
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    continue
                return None
            if attempt:
                logger.info("%s: the broker answers", self.hostname)
            return conn

    def _start_consumer(self) -> asyncio.Task[None]:
        assert self.conn is not None and self._slots is not None
        assert self._execution is not None
        consumer = asyncio.get_running_loop().create_task(
            self._consume(self.conn, self._execution, self._slots)
        )
        consumer.add_done_callback(self._consumer_ended)
        return consumer

    async def consume_from(self, queues: Sequence[str]) -> None:
        """Consume ``queues`` from now on instead of :attr:`queues` (remote control's
        ``add_consumer`` and ``cancel_consumer``): the consumer is stopped, what it held
        and had not handed out goes back, and a new one starts on the new list. Tasks
        running go on. An empty list: the worker consumes nothing until given a queue."""
        self.queues = list(dict.fromkeys(queues))
        if self._consumer is None or self._stopping is None or self._stopping.is_set():
            return
        old = self._consumer
        old.cancel()
        await self._within("stop consuming", {old})
        if self.queues and not self._stopping.is_set():
            self._consumer = self._start_consumer()

    def _consumer_ended(self, consumer: asyncio.Task[None]) -> None:
        """A consumer that fails stops the worker, which then raises its error: a worker that
        no longer consumes must not look alive. (Outages never end a consumer: transports
        ride them out.)"""
        if consumer.cancelled() or consumer.exception() is None:
            return
        self._failure = consumer.exception()
        logger.error("%s stopped consuming: %s", self.hostname, self._failure)
        if self._stopping is not None:
            self._stopping.set()

    async def _consume(
        self, conn: Connection, execution: Execution, slots: asyncio.Semaphore
    ) -> None:
        deliveries = conn.broker.consume(self.queues, prefetch=self.prefetch)
        loop = asyncio.get_running_loop()
        taken = 0
        try:
            async for delivery in deliveries:
                try:
                    await slots.acquire()
                except asyncio.CancelledError:
                    await conn.broker.requeue(delivery)
                    raise
                slot = _Slot(slots)
                handler = loop.create_task(execution.handle(delivery, slot.release))
                self._running[handler] = delivery
                handler.add_done_callback(partial(self._finished, slot=slot))
                taken += 1
                if self.max_tasks and taken >= self.max_tasks:
                    logger.info(
                        "%s took %d tasks (worker_max_tasks_per_child): it stops once they"
                        " end, to be replaced",
                        self.hostname,
                        taken,
                    )
                    self._retire()
                    return
        finally:
            await deliveries.aclose()

    def resize(self, change: int) -> None:
        """Run ``change`` more tasks at once (fewer if negative; never fewer than one):
        remote control's ``pool_grow`` and ``pool_shrink``. Growing frees slots at once;
        shrinking takes slots as running tasks give them back."""
        if self._slots is None:
            raise RuntimeError("the worker is not running")
        change = max(change, 1 - self.concurrency)
        self.concurrency += change
        if change > 0:
            for _ in range(change):
                self._slots.release()
        elif change < 0:
            loop = asyncio.get_running_loop()
            for _ in range(-change):
                taking = loop.create_task(self._slots.acquire())
                self._shrinking.add(taking)
                taking.add_done_callback(self._shrinking.discard)

    def _finished(self, handler: asyncio.Task[None], *, slot: _Slot) -> None:
        self._running.pop(handler, None)
        slot.release()
        if handler.cancelled():
            return
        self.processed += 1
        if handler.exception() is not None:
            logger.error("worker bug while handling a message", exc_info=handler.exception())

    def _watch_loop(self, loop: asyncio.AbstractEventLoop) -> LoopWatch | None:
        """Report an event loop blocked longer than ``worker_loop_block_warning``."""
        threshold = self.app.conf.worker_loop_block_warning
        if not threshold:
            return None
        watch = LoopWatch(loop, threshold, self._async_tasks)
        watch.start()
        return watch

    def _async_tasks(self) -> list[tuple[asyncio.Task[Any] | None, str]]:
        """The ``async def`` tasks running, for the loop watch (called from its thread)."""
        tasks = self.app.tasks
        return [
            (running.handler, f"{running.request.task}[{running.request.id}]")
            for running in self.running.snapshot()
            if (task := tasks.get(running.request.task)) is not None and task.is_async
        ]

    async def _watch_memory(self, limit_kib: int) -> None:
        """Stop gracefully once resident memory passes ``limit_kib`` (checked every second:
        cheap, and a task's memory shows once it has run anyway)."""
        while True:
            await asyncio.sleep(1.0)
            used = resident_kib()
            if used is not None and used > limit_kib:
                logger.info(
                    "%s uses %d KiB, over worker_max_memory_per_child=%d: stopping to be replaced",
                    self.hostname,
                    used,
                    limit_kib,
                )
                self._retire()
                return

    async def _drain(self) -> None:
        if self._running and self._signals < 2:
            logger.info(
                "waiting up to %gs for %d running task(s)",
                self.shutdown_timeout,
                len(self._running),
            )
            await asyncio.wait(set(self._running), timeout=self.shutdown_timeout)
        if self._running:
            logger.warning("requeueing %d unfinished task(s)", len(self._running))
            for handler in self._running:
                handler.cancel()
            await self._within("requeue the unfinished tasks", set(self._running))

    async def _within(self, step: str, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for ``tasks``, ``BROKER_STEP_TIMEOUT`` at most (then log one line and go on)."""
        _, pending = await asyncio.wait(tasks, timeout=BROKER_STEP_TIMEOUT)
        if pending:
            logger.warning(
                "%s: could not %s within %gs (is the broker answering?); going on: closing"
                " the connection puts back what was not acknowledged",
                self.hostname,
                step,
                BROKER_STEP_TIMEOUT,
            )

    def _retire(self) -> None:
        """Stop gracefully, without counting as a signal (a later SIGTERM still drains)."""
        if self._stopping is not None:
            self._stopping.set()

    def stop(self) -> None:
        """Ask for a graceful shutdown; a second call (or signal) stops at once."""
        self._signals += 1
        if self._signals == 1:
            logger.info("shutting down gracefully (signal again to stop at once)")
        else:
            logger.warning("stopping at once: running tasks go back to the queue")
            for handler in self._running:
                handler.cancel()
        if self._stopping is not None:
            self._stopping.set()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (RuntimeError, ValueError, NotImplementedError):
                return  # not the main thread (tests): stop() is called directly

    def _remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                return


class _Slot:
    """One unit of concurrency, given back once: when the task has run, or at the latest
    when its handler ends."""

    __slots__ = ("_slots",)

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.release()
            self._slots = None


def resident_kib() -> int | None:
    """This process's resident memory in KiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)
