"""celeriac as one more target of ``shared/bench`` (see bench/README.md).

Brokers: the embedded SQLite file (target ``celeriac@sqlite``; results in the same file),
Redis (``celeriac@redis``: the harness's broker DB 1, results in DB 2) and RabbitMQ
(``celeriac@amqp``: the harness's vhost ``bench``, results in Redis DB 2, as aio-celery's
and Celery's are there). Completion: the
harness counter (``await adone()``) inside each task. Round trip:
``await (await noop.delay()).get()``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from bench import common as C

from celeriac import Celery

BROKERS = ("sqlite", "redis", "amqp")
QUEUE = "bench_celeriac"
NOTES = (
    "embedded SQLite broker + result store (WAL), Redis broker + Redis results, or RabbitMQ +"
    " Redis results; one worker"
    " process, asyncio tasks; -l warning (no per-task log lines), acks_late (the default)"
)

DB_DIR = Path(os.environ.get("CELERIAC_BENCH_DIR", "/tmp/celeriac-bench"))
if C.BROKER == "redis":
    app = Celery("bench", broker=C.REDIS_BROKER_URL, backend=C.REDIS_RESULT_URL)
elif C.BROKER == "amqp":
    app = Celery("bench", broker=C.AMQP_URL, backend=C.REDIS_RESULT_URL)
    app.conf.update(task_default_queue=QUEUE)
else:
    app = Celery("bench", broker=f"sqlite:///{DB_DIR / 'bench.db'}")
app.conf.update(result_expires=3600)


@app.task(name="bench.noop")
async def noop() -> None:
    await C.adone()


@app.task(name="bench.sleep")
async def sleep() -> None:
    await asyncio.sleep(C.SLEEP_S)
    await C.adone()


def worker_profiles() -> dict[str, Any]:
    base = [sys.executable, "-m", "celeriac.cli", "-A", "celeriac_adapter:app", "worker"]
    base += ["-l", "warning"]
    concurrency = str(C.CONCURRENCY or 100)
    return {
        "drain": {f"c{concurrency}": {"argv": [*base, "-c", concurrency]}},
        "e2e": {"c100": {"argv": [*base, "-c", "100"]}},
    }


def purge() -> None:
    if C.BROKER == "amqp":
        redis.Redis.from_url(C.REDIS_RESULT_URL).flushdb()  # the harness's results DB
        C.purge_amqp([QUEUE])
        return
    if C.BROKER == "redis":
        # The harness owns these two databases: start each trial from empty ones.
        for url in (C.REDIS_BROKER_URL, C.REDIS_RESULT_URL):
            redis.Redis.from_url(url).flushdb()
        return
    shutil.rmtree(DB_DIR, ignore_errors=True)
    DB_DIR.mkdir(parents=True)


async def enqueue(task: str, n: int, mark: Callable[[], None]) -> None:
    """100 ``delay()`` in flight at a time, as the aio-celery adapter sends (on RabbitMQ each
    waits for its publisher confirm; in flight together, they share round trips)."""
    fn = noop if task == "noop" else sleep
    async with app.setup():
        mark()
        await C.gather_chunks(fn.delay, n, 100)


async def roundtrip(count: int, cap: float) -> list[float]:
    latencies: list[float] = []
    async with app.setup():
        for _ in range(5):
            await (await noop.delay()).get(timeout=30)
        stop = time.monotonic() + cap
        while len(latencies) < count and time.monotonic() < stop:
            started = time.perf_counter()
            await (await noop.delay()).get(timeout=30)
            latencies.append(time.perf_counter() - started)
    return latencies
