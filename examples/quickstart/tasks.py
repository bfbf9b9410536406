"""The tasks module of the README's tutorial: one async task, one sync task, one that fails."""

from __future__ import annotations

import asyncio
import time

from celeriac import Celery

app = Celery("tasks")  # no broker given: the embedded SQLite file celeriac.db


@app.task
async def add(x: int, y: int) -> int:
    await asyncio.sleep(0.1)  # stands for awaiting an HTTP call or a database
    return x + y


@app.task
def word_count(text: str) -> int:
    time.sleep(0.1)  # stands for blocking work: it runs in the worker's thread pool
    return len(text.split())


@app.task(bind=True, max_retries=3)
async def flaky(self, attempts_needed: int) -> str:  # type: ignore[no-untyped-def]
    if self.request.retries < attempts_needed:
        raise self.retry(exc=ConnectionError("service unavailable"), countdown=0.2)
    return f"succeeded after {self.request.retries} retries"
