"""What celeriac's own benchmarks share: the local services and cleaning up after a run."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/14"
REDIS_RESULTS = "redis://127.0.0.1:6379/15"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def own_queue(kind: str) -> str:
    """A queue name no other run uses (deleted afterwards)."""
    return f"celeriac-{kind}-{uuid.uuid4().hex[:12]}"


def own_prefix(kind: str) -> str:
    """A Redis key prefix no other run uses (its keys are deleted afterwards)."""
    return f"celeriac-{kind}-{uuid.uuid4().hex}:"


def resident_mib() -> float:
    """This process's resident memory (Linux ``/proc``), in MiB as the shared harness reports."""
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


class Completions:
    """Counts ``n`` completions and times the first to the last: a drain's rate, which
    leaves out the start-up before the first."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first = self.last = 0.0
        self.done = asyncio.Event()

    def mark(self) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.count == 1:
            self.first = self.last
        if self.count == self.n:
            self.done.set()

    def rate(self) -> float:
        return (self.n - 1) / (self.last - self.first)


def loop_factory() -> Any:
    """The worker command's loop: uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def delete_amqp_queue(queue: str) -> None:
    import aiormq

    connection = await aiormq.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.queue_delete(queue)
    await channel.exchange_delete(queue)  # Celery declares a direct exchange per queue
    await connection.close()


def delete_prefixed(prefix: str, url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
