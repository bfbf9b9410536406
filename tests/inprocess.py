"""A worker in the test's own process, on the in-memory broker (unit tests only)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from celeriac import Celery
from celeriac.worker.worker import Worker


def memory_app(name: str) -> Celery:
    """An app on a memory broker of its own."""
    return Celery(name, broker=f"memory://{uuid.uuid4().hex}")


async def run_worker(app: Celery, work: Callable[[], Awaitable[Any]], concurrency: int = 20) -> Any:
    """Start a worker, await ``work()`` (which queues tasks and waits for them), stop it
    gracefully; returns what ``work()`` returned."""
    async with app.setup():
        worker = Worker(app, concurrency=concurrency)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            return await work()
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
