"""Tasks for the reliability tests (Redis, RabbitMQ): every run is recorded, so a test can
count runs.

Each run appends ``start`` and ``end`` events (JSON: kind, task id, pid, time, ETA) to the
list ``<record prefix>events`` and bumps ``<record prefix>ended`` on the *recording* Redis,
which is always the shared test server (``CELERIAC_TEST_RECORD_URL``): a test that stops
the broker's Redis still sees every run. Broker and results come from the environment, as
for the ``basic`` app (``CELERIAC_BROKER_URL``, ``CELERIAC_RESULT_BACKEND``,
``CELERIAC_TEST_TRANSPORT_OPTIONS``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis

from celeriac import Celery

app = Celery("reliable")

RECORD_URL_ENV = "CELERIAC_TEST_RECORD_URL"
RECORD_PREFIX_ENV = "CELERIAC_TEST_RECORD_PREFIX"
_recorder: aioredis.Redis | None = None


def configure_from_env() -> None:
    """The test's key prefix and visibility timeout; the test process calls this again for
    each test, since it imports this module once."""
    options = json.loads(os.environ.get("CELERIAC_TEST_TRANSPORT_OPTIONS") or "{}")
    app.conf.broker_transport_options = options
    prefix = options.get("global_keyprefix") or os.environ.get("CELERIAC_TEST_RESULT_PREFIX")
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix} if prefix else {}


configure_from_env()


def recorder() -> aioredis.Redis:
    """The worker's client for the recording Redis (made on first use, on the worker's loop)."""
    global _recorder
    if _recorder is None:
        _recorder = aioredis.Redis.from_url(
            os.environ.get(RECORD_URL_ENV, "redis://127.0.0.1:6379/14")
        )
    return _recorder


async def record(kind: str, request: Any) -> None:
    prefix = os.environ[RECORD_PREFIX_ENV]
    event = {
        "kind": kind,
        "id": request.id,
        "pid": os.getpid(),
        "at": time.time(),
        "eta": request.eta.timestamp() if request.eta is not None else None,
        "redelivered": bool(request.delivery_info.get("redelivered")),
    }
    pipe = recorder().pipeline(transaction=True)
    pipe.rpush(prefix + "events", json.dumps(event))
    if kind == "end":
        pipe.incr(prefix + "ended")
    await pipe.execute()


@app.task(bind=True, acks_late=True)
async def work(self: Any, seconds: float) -> str:
    """Record the start, sleep ``seconds`` (on the loop), record the end."""
    await record("start", self.request)
    await asyncio.sleep(seconds)
    await record("end", self.request)
    return str(self.request.id)
