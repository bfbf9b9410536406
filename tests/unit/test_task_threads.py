"""The worker's task threads: a thread pool whose busy threads never hold the process."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError

import pytest

from celeriac.worker.threads import TaskThreads


async def test_runs_calls_on_at_most_size_daemon_threads() -> None:
    pool = TaskThreads(2, "t")
    loop = asyncio.get_running_loop()
    release = threading.Event()
    names: list[str] = []

    def blocked(n: int) -> int:
        names.append(threading.current_thread().name)
        assert threading.current_thread().daemon
        release.wait(10)
        return n * 2

    running = [loop.run_in_executor(pool, blocked, n) for n in range(5)]
    release.set()
    assert await asyncio.gather(*running) == [0, 2, 4, 6, 8]
    assert set(names) <= {"t_0", "t_1"}
    pool.shutdown(wait=True)


async def test_an_exception_reaches_the_caller() -> None:
    pool = TaskThreads(1, "t")
    with pytest.raises(ZeroDivisionError):
        await asyncio.get_running_loop().run_in_executor(pool, lambda: 1 / 0)
    pool.shutdown(wait=True)


def test_shutdown_cancels_waiting_calls_and_leaves_a_busy_thread() -> None:
    pool = TaskThreads(1, "t")
    release = threading.Event()
    started = threading.Event()

    def busy() -> str:
        started.set()
        release.wait(10)
        return "busy"

    first = pool.submit(busy)
    assert started.wait(10)
    waiting = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)  # returns while the thread is busy
    assert waiting.cancelled() and not first.done()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: "late")
    release.set()
    assert first.result(10) == "busy"
    with pytest.raises(CancelledError):
        waiting.result(0)
    pool.shutdown(wait=True)  # the thread ends once its call has returned
