"""A Redis outage under a running worker is logged once when it starts and once when it ends,
and the retries back off exponentially (up to a cap) instead of hammering the server.

The outage is a private ``redis-server`` of the test's own, stopped for about five seconds
while an idle worker waits on it in BRPOP (the path whose swallowed errors once made the
worker log "reachable again" after every failed attempt and reset its backoff).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.connection import Outage
from celeriac.worker.worker import Worker
from services import eventually

from .private_redis import PrivateRedis

pytestmark = pytest.mark.integration

OUTAGE = 5.0  # seconds Redis stays down
WAIT = 20.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    private = PrivateRedis(tmp_path)
    private.start()
    yield private
    private.close()


@pytest.fixture
async def app(server: PrivateRedis) -> AsyncIterator[Celery]:
    app = Celery("outage", broker=server.url(0), backend=server.url(1))
    app.conf.task_default_queue = f"outage-{uuid.uuid4().hex[:12]}"
    # The connection attempts counted are the consumer's: remote control's subscription and
    # the heartbeats back off and retry on their own schedules (tested elsewhere).
    app.conf.worker_enable_remote_control = False
    app.conf.worker_heartbeat_interval = 60.0

    @app.task(name="outage.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app.setup():
        yield app


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_an_outage_is_logged_once_each_way_and_retries_back_off(
    server: PrivateRedis, app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    broker = (await app.connection()).broker
    assert isinstance(broker, RedisBroker)
    worker = Worker(app, concurrency=2)
    running = asyncio.get_running_loop().create_task(worker.run())
    down = f"broker: Redis at {server.url(0)} is unreachable"
    back = f"broker: Redis at {server.url(0)} is reachable again"
    try:
        with caplog.at_level(logging.INFO, logger="celeriac"):

            async def blocked() -> bool:  # idle: the consumer waits in BRPOP
                return any(blocker._waiting for blocker in broker._blockers)

            # A task popped by BRPOP while nothing else comes: from then on the consumer
            # goes straight to BRPOP, without a claim first (the path of the bug).
            await eventually(blocked, WAIT, "the idle worker to wait in BRPOP")
            assert await (await app.send_task("outage.add", (1, 2))).get(timeout=WAIT) == 3
            await eventually(blocked, WAIT, "the idle worker to wait in BRPOP again")
            attempts = count_connection_attempts(broker)
            delays = record_delays(broker)
            server.stop()
            stopped = time.monotonic()
            await eventually(lambda: lines(caplog, down), WAIT, "the outage to be logged")
            await asyncio.sleep(OUTAGE - (time.monotonic() - stopped))  # the outage itself
            during = [at for at in attempts if at > stopped]
            server.start()
            await eventually(lambda: lines(caplog, back), WAIT, "the recovery to be logged")
            assert await (await app.send_task("outage.add", (3, 4))).get(timeout=WAIT) == 7
            assert not running.done(), f"the worker stopped: {running.exception()!r}"
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), WAIT)

    assert len(lines(caplog, down)) == 1, lines(caplog, "Redis at")
    assert len(lines(caplog, back)) == 1, lines(caplog, "Redis at")
    for component in ("result backend", "result listener"):  # at most one of each, too
        assert len(lines(caplog, f"{component}: Redis at {server.url(1)} is unreachable")) <= 1
        assert len(lines(caplog, f"{component}: Redis at {server.url(1)} is reachable")) <= 1
    gaps = [b - a for a, b in itertools.pairwise(during)]
    print(f"\n{len(during)} connection attempts in the outage, gaps {[round(g, 2) for g in gaps]}")
    # Exponential from 50 ms: about ten attempts in five seconds, the last ones over a second
    # apart. (At a constant 50 ms it would be a hundred or more.)
    assert 2 <= len(during) <= 20, f"{len(during)} connection attempts in {OUTAGE} s: {gaps}"
    # Each wait doubles the last (from 50 ms, jittered by +-25%: at least x1.2 between two),
    # so the fifth, about a second into the outage, is 0.6 s or more.
    shown = [round(d, 3) for d in delays]
    assert len(delays) >= 5, f"too few retries in {OUTAGE} s: {shown}"
    assert all(b >= 1.2 * a for a, b in itertools.pairwise(delays[:6])), shown
    assert max(delays) >= 0.6, f"the retry delay never grew past {max(delays):.3f} s: {shown}"


def record_delays(broker: RedisBroker) -> list[float]:
    """Record each wait the broker's outage backoff chooses; returns the list it fills."""
    outage = broker._outage
    chosen: list[float] = []
    choose = outage.next_delay

    def recorded() -> float:
        chosen.append(choose())
        return chosen[-1]

    outage.next_delay = recorded  # type: ignore[method-assign]
    return chosen


def count_connection_attempts(broker: RedisBroker) -> list[float]:
    """Record when the broker's client opens a connection (every retry opens one, since
    the old ones died with the server); returns the list it fills."""
    client = broker.client
    opened: list[float] = []
    connect = client._open

    async def counted(*args: Any) -> Any:
        opened.append(time.monotonic())
        return await connect(*args)

    client._open = counted  # type: ignore[method-assign]
    return opened


def test_backoff_doubles_from_50_ms_up_to_a_5_s_cap() -> None:
    outage = Outage("redis://127.0.0.1:1/0", "broker")
    delays = [outage.next_delay() for _ in range(12)]
    expected = [min(0.05 * 2**n, 5.0) for n in range(12)]
    for delay, nominal in zip(delays, expected, strict=True):
        assert 0.75 * nominal <= delay <= 1.25 * nominal, (delays, expected)
    outage.over()
    assert outage.next_delay() <= 1.25 * 0.05  # the next outage starts from the bottom again
