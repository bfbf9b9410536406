"""The threads that run plain ``def`` tasks: a thread pool whose threads never hold the
process at exit.

The standard ``ThreadPoolExecutor`` joins its threads when the interpreter exits, so a
worker stopped at once (a second SIGTERM/SIGINT) while a ``def`` task sleeps in
``time.sleep(30)`` would go on waiting 30 s for a thread whose outcome it has already given
up: its message is back in the queue and nothing it does is stored any more. A thread cannot
be killed; these are daemon threads, so the process exits without them. A graceful stop
still waits for running tasks (``worker_shutdown_timeout``) before it gets there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")
#: One call to make: its future, the function and its arguments.
_Work = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class TaskThreads(Executor):
    """Up to ``size`` daemon threads, started as work comes and no thread is idle."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run a task: the worker's task threads are shut down")
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.size:
                self._start_thread()
        return future

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._serve, name=f"{self.name}_{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                self._work.put(None)  # for the next thread
                return
            future, fn, args, kwargs = work
            del work
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the future carries it to the loop
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs  # before idling: the results are the caller's
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; idle threads end, busy ones once their call returns.
        ``wait``: wait for that (a forced stop passes False and leaves busy ones behind)."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                self._cancel_waiting()
            self._work.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()

    def _cancel_waiting(self) -> None:
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                return
            if work is not None:
                work[0].cancel()
