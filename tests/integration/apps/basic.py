"""Tasks the integration tests run in a real worker process (broker from the environment)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from celeriac import Celery, use
from celeriac.errors import SoftTimeLimitExceeded

app = Celery("basic")


def configure_from_env() -> None:
    """Redis runs get their own key prefix (and a short visibility timeout) from the test;
    the test process calls this again for each test, since it imports this module once."""
    options = json.loads(os.environ.get("CELERIAC_TEST_TRANSPORT_OPTIONS") or "{}")
    app.conf.broker_transport_options = options
    prefix = options.get("global_keyprefix") or os.environ.get("CELERIAC_TEST_RESULT_PREFIX")
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix} if prefix else {}
    priority = os.environ.get("CELERIAC_TEST_MAX_PRIORITY")
    app.conf.task_queue_max_priority = int(priority) if priority else None


configure_from_env()
MARKS = Path(os.environ.get("CELERIAC_TEST_MARKS", "/tmp"))


class CustomError(Exception):
    """A task's own exception type, importable by the test process too."""


def mark(name: str, text: str = "") -> None:
    """Leave evidence that a task ran (the test waits for files, not for time)."""
    with open(MARKS / name, "a") as f:
        f.write(text + "\n")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
async def boom(message: str) -> None:
    raise CustomError(message, 42)


@app.task
def builtin_boom() -> None:
    raise ValueError("kaboom")


@app.task(bind=True, max_retries=3)
async def flaky(self: Any, fail_times: int) -> dict[str, Any]:
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError("try again"), countdown=0.05)
    return {"retries": self.request.retries, "hostname": self.request.hostname}


@app.task(bind=True, max_retries=2)
def always_retry(self: Any) -> None:
    raise self.retry(exc=KeyError("never"), countdown=0.01)


@app.task(autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=0.01, retry_jitter=False)
def auto(name: str) -> str:
    mark(name, "try")
    raise ConnectionError("still down")


@app.task
async def slow(seconds: float, name: str) -> str:
    mark(name + ".start")
    await asyncio.sleep(seconds)
    mark(name + ".end")
    return name


@app.task
def slow_sync(seconds: float, name: str) -> str:
    mark(name + ".start")
    time.sleep(seconds)
    mark(name + ".end")
    return name


@app.task(time_limit=0.3)
async def hard_async() -> None:
    await asyncio.sleep(30)


@app.task(soft_time_limit=0.2)
async def soft_async() -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(time_limit=0.3)
def hard_sync() -> None:
    for _ in range(3000):
        time.sleep(0.01)


@app.task(soft_time_limit=0.2)
def soft_sync() -> str:
    try:
        for _ in range(3000):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(bind=True)
async def progress(self: Any, total: int) -> int:
    for i in range(total):
        await self.update_state(state="PROGRESS", meta={"current": i + 1, "total": total})
    return total


@app.task(bind=True)
def whoami(self: Any) -> dict[str, Any]:
    return {
        "id": self.request.id,
        "retries": self.request.retries,
        "queue": self.request.delivery_info.get("routing_key"),
    }


@app.task
def record(name: str, value: str) -> str:
    mark(name, value)
    return value


@app.task
async def waits_inside(task_id: str) -> str:
    try:
        await app.AsyncResult(task_id).get(timeout=1)
    except Exception as exc:  # the refusal is the point
        return type(exc).__name__
    return "no error"


@app.task(bind=True)
async def progress_then_wait(self: Any, name: str) -> str:
    await self.update_state(state="PROGRESS", meta={"current": 1, "total": 2})
    for _ in range(1000):
        if (MARKS / name).exists():
            return "released"
        await asyncio.sleep(0.01)
    return "timed out"


class Connections:
    """A stand-in for a pool: its build and close leave marks, with the worker's pid."""

    def __init__(self) -> None:
        mark("resource-built", str(os.getpid()))

    def close(self) -> None:
        mark("resource-closed", str(os.getpid()))


@app.resource
async def connections() -> AsyncIterator[Connections]:
    pool = Connections()
    yield pool
    pool.close()


@app.task
async def resource_id_async(n: int, pool: Connections = use(connections)) -> list[int]:
    return [os.getpid(), id(pool)]


@app.task
def resource_id_sync(n: int, pool: Connections = use(connections)) -> list[int]:
    return [os.getpid(), id(pool)]


@app.task
async def count_up(n: int, release: str) -> AsyncIterator[dict[str, int]]:
    """Streams n events; after the first, waits until the test leaves the ``release`` mark
    (so the caller provably sees events while the task runs)."""
    for i in range(n):
        yield {"current": i + 1, "total": n}
        if i == 0:
            for _ in range(2000):
                if (MARKS / release).exists():
                    break
                await asyncio.sleep(0.01)


@app.task
def count_up_sync(n: int) -> Iterator[int]:
    yield from range(n)
    return n  # type: ignore[misc]  # the result


@app.task
async def pid_after(seconds: float, name: str = "") -> int:
    """The pid of the process that ran it; leaves ``name`` + ``.start`` first if named."""
    if name:
        mark(name + ".start", str(os.getpid()))
    await asyncio.sleep(seconds)
    return os.getpid()
