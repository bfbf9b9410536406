"""What the worker logs to diagnose tasks: a blocked event loop, a failure's traceback, a
result that could not be stored (memory://, one process)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from celeriac import Celery
from celeriac.worker.worker import Worker


@pytest.fixture
async def app() -> AsyncIterator[Celery]:
    app = Celery("diag", broker=f"memory://{uuid.uuid4().hex}")
    async with app.setup():
        yield app


async def run_worker(app: Celery, **options: Any) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, **options)
    return worker, asyncio.get_running_loop().create_task(worker.run())


async def stop(worker: Worker, running: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(running, 10)


def block_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "event loop has been blocked" in r.getMessage()
    ]


async def test_an_async_task_that_blocks_the_loop_is_named_while_it_blocks(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.worker_loop_block_warning = 0.5
    logged_while_blocked: list[bool] = []

    @app.task(name="diag.blocks")
    async def blocks() -> str:
        time.sleep(1.5)  # noqa: ASYNC251 - the mistake the warning is for
        logged_while_blocked.append(bool(block_warnings(caplog)))
        return "done"

    caplog.set_level(logging.INFO, logger="celeriac")
    worker, running = await run_worker(app)
    try:
        result = await blocks.delay()
        assert await result.get(timeout=10) == "done"
    finally:
        await stop(worker, running)
    [warning] = block_warnings(caplog)
    text = warning.getMessage()
    assert f"by task diag.blocks[{result.id}]" in text
    assert "worker_loop_block_warning=0.5" in text
    assert "test_worker_diagnostics.py" in text and "in blocks" in text  # the blocking line
    assert "await the blocking call" in text and "plain def" in text
    assert logged_while_blocked == [True]  # from the watch thread, before the loop ran again


async def test_a_task_that_awaits_is_not_reported(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.worker_loop_block_warning = 0.5

    @app.task(name="diag.awaits")
    async def awaits() -> str:
        await asyncio.sleep(1.5)
        return "fine"

    caplog.set_level(logging.INFO, logger="celeriac")
    worker, running = await run_worker(app)
    try:
        assert await (await awaits.delay()).get(timeout=10) == "fine"
    finally:
        await stop(worker, running)
    assert block_warnings(caplog) == []


async def test_a_block_outside_any_task_lists_the_async_tasks_running(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop blocked by a callback: the warning lists the async tasks that were running
    (from the worker's registry of running requests), not the plain def one in a thread."""
    app.conf.worker_loop_block_warning = 0.5
    both_running = threading.Barrier(2, timeout=10)  # the async task, and the thread's one
    release = threading.Event()
    both_started = asyncio.Event()

    @app.task(name="diag.waits")
    async def waits() -> str:
        await asyncio.to_thread(both_running.wait)
        both_started.set()
        await asyncio.to_thread(release.wait, 10)
        return "waited"

    @app.task(name="diag.in_thread")
    def in_thread() -> str:
        both_running.wait()
        release.wait(10)
        return "threaded"

    caplog.set_level(logging.INFO, logger="celeriac")
    worker, running = await run_worker(app)
    try:
        waited, threaded = await waits.delay(), await in_thread.delay()
        await asyncio.wait_for(both_started.wait(), 10)
        assert len(worker.running) == 2
        time.sleep(1.0)  # noqa: ASYNC251 - the loop blocked outside every task of the worker
        release.set()
        assert await waited.get(timeout=10) == "waited"
        assert await threaded.get(timeout=10) == "threaded"
    finally:
        release.set()
        await stop(worker, running)
    [warning] = block_warnings(caplog)
    text = warning.getMessage()
    assert f"while these async tasks run: diag.waits[{waited.id}]" in text
    assert "diag.in_thread" not in text


async def test_the_check_is_off_with_zero(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    app.conf.worker_loop_block_warning = 0

    @app.task(name="diag.blocks")
    async def blocks() -> str:
        time.sleep(0.3)  # noqa: ASYNC251
        return "done"

    caplog.set_level(logging.INFO, logger="celeriac")
    worker, running = await run_worker(app)
    try:
        assert await (await blocks.delay()).get(timeout=10) == "done"
        threads = {t.name for t in threading.enumerate()}
        assert "celeriac-loop-watch" not in threads
    finally:
        await stop(worker, running)
    assert block_warnings(caplog) == []


def worker_records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "celeriac.worker" and text in r.getMessage()]


async def test_a_failed_tasks_traceback_is_logged_once_at_error(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    def divide_by_zero() -> float:
        return 1 / 0

    @app.task(name="diag.fails")
    async def fails() -> float:
        return divide_by_zero()

    caplog.set_level(logging.INFO, logger="celeriac")
    worker, running = await run_worker(app)
    try:
        result = await fails.delay()
        with pytest.raises(ZeroDivisionError):
            await result.get(timeout=10)
    finally:
        await stop(worker, running)
    [failed] = worker_records(caplog, f"task diag.fails[{result.id}] failed")
    assert failed.levelno == logging.ERROR
    assert "ZeroDivisionError: division by zero" in failed.getMessage()
    assert caplog.text.count("Traceback (most recent call last)") == 1
    assert "in divide_by_zero\n    return 1 / 0" in caplog.text  # the frame that raised


async def test_a_result_that_cannot_be_stored_is_not_logged_as_succeeded(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="diag.unstorable")
    async def unstorable() -> object:
        return object()  # JSON cannot encode it

    caplog.set_level(logging.INFO, logger="celeriac")
    worker, running = await run_worker(app)
    try:
        result = await unstorable.delay()
        with pytest.raises(TypeError, match="result not serializable"):
            await result.get(timeout=10)
    finally:
        await stop(worker, running)
    assert worker_records(caplog, "succeeded in") == []
    [refused] = worker_records(caplog, "could not be stored")
    assert refused.levelno == logging.ERROR
    assert refused.getMessage().startswith(
        f"task diag.unstorable[{result.id}] succeeded, but its result could not be stored"
        " (TypeError"
    )
