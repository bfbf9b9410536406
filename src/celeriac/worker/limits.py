"""Time limits for async and sync tasks alike.

``soft_time_limit`` raises :class:`SoftTimeLimitExceeded` *inside* the task so it can clean
up; ``time_limit`` stops it and the task fails with :class:`TimeLimitExceeded`.

Async tasks: a coroutine is driven step by step (:class:`_Interruptible`) so that the soft
limit can throw its exception into the coroutine where it is suspended; the hard limit cancels.

Sync tasks run in a thread; a limit is delivered with ``PyThreadState_SetAsyncExc``, which
takes effect at the thread's next Python bytecode. A thread stuck in C code (a blocking
socket call, a long NumPy operation) does not see it until the C call returns: the worker
still reports the task as failed at the hard limit and moves on, but that thread stays busy
until the call returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any

from celeriac.errors import SoftTimeLimitExceeded, TimeLimitExceeded


class _Interruptible:
    """Awaitable that runs a coroutine and can throw SoftTimeLimitExceeded into it."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.soft_pending = False

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = coro.send(send) if throw is None else coro.throw(throw)
            except StopIteration as stop:
                return stop.value
            try:
                send, throw = (yield yielded), None
            except asyncio.CancelledError as exc:
                send, throw = None, exc
                if self.soft_pending:
                    self.soft_pending = False
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    throw = SoftTimeLimitExceeded("soft time limit exceeded")
            except BaseException as exc:
                send, throw = None, exc


async def run_async(coro: Coroutine[Any, Any, Any], hard: float | None, soft: float | None) -> Any:
    """Await ``coro`` under the limits (seconds); None means no limit."""
    if hard is None and soft is None:
        return await coro
    runner = _Interruptible(coro)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    soft_timer = None
    if soft is not None and task is not None:

        def fire_soft() -> None:
            runner.soft_pending = True
            task.cancel()

        soft_timer = loop.call_later(soft, fire_soft)
    try:
        if hard is None:
            return await runner
        try:
            async with asyncio.timeout(hard):
                return await runner
        except TimeoutError:
            raise TimeLimitExceeded(f"time limit ({hard:g} s) exceeded") from None
    finally:
        if soft_timer is not None:
            soft_timer.cancel()


class _ThreadJob:
    """A sync call in a pool thread, into which a limit exception can be raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._done = False

    def __call__(self) -> Any:
        with self._lock:
            self._thread_id = threading.get_ident()
        try:
            return self._fn()
        finally:
            with self._lock:
                self._done = True

    def interrupt(self, exc_type: type[BaseException]) -> None:
        import ctypes  # only when a time limit fires

        with self._lock:
            if self._thread_id is None or self._done:
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread_id), ctypes.py_object(exc_type)
            )


async def run_sync(
    fn: Callable[[], Any], executor: Executor, hard: float | None, soft: float | None
) -> Any:
    """Run ``fn`` in ``executor`` (with the caller's context) under the limits."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    job = _ThreadJob(lambda: context.run(fn))
    future = loop.run_in_executor(executor, job)
    timers = []
    if soft is not None:
        timers.append(loop.call_later(soft, job.interrupt, SoftTimeLimitExceeded))
    try:
        if hard is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), hard)
        except TimeoutError:
            job.interrupt(TimeLimitExceeded)
            raise TimeLimitExceeded(f"time limit ({hard:g} s) exceeded") from None
    except asyncio.CancelledError:
        job.interrupt(TimeLimitExceeded)
        raise
    finally:
        for timer in timers:
            timer.cancel()
