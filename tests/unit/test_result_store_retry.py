"""An outcome the result store cannot take now is kept and stored again, never a reason to run
the task again; one it can never take becomes a FAILURE that says why.

The store is the memory backend of the worker's own app, made to raise ``BackendUnreachable``
(an outage) or ``ResultRejected`` (a refusal) from its ``_set``; the broker is the memory
broker, whose ack, requeue and dead letters are recorded in order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from celeriac import Celery
from celeriac.errors import BackendUnreachable, ResultRejected, ResultTooLarge
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker, Delivery
from celeriac.transports.memory.broker import MemoryBroker
from celeriac.worker import execution
from celeriac.worker.worker import Worker
from services import eventually

WAIT = 10.0
CANNOT_STORE = "cannot store the SUCCESS state of task"
STORED_AGAIN = "stored results in the result store"


@dataclass
class Flaky:
    """What the patched store does: how many stores of a final state fail, with what, and
    what happened, in order (``fail`` / ``stored`` / ``ack`` / ``requeue``)."""

    failures: int = 0
    error: Callable[[], Exception] = lambda: BackendUnreachable("test: the store is away")
    journal: list[str] = field(default_factory=list)
    failed: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Celery]:
    monkeypatch.setattr(execution, "STORE_RETRY_FIRST_DELAY", 0.01, raising=False)
    monkeypatch.setattr(execution, "STORE_RETRY_MAX_DELAY", 0.05, raising=False)
    app = Celery("retry", broker=f"memory://{uuid.uuid4().hex}")
    async with app.setup():
        yield app


async def patched(app: Celery, monkeypatch: pytest.MonkeyPatch, flaky: Flaky) -> MemoryBroker:
    """Make the app's store flaky and record the broker's settlements; returns the broker."""
    conn = await app.connection()
    backend: ResultBackend = conn.backend
    set_record = backend._set

    async def flaky_set(task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        if ready and flaky.failures > 0:
            flaky.failures -= 1
            flaky.journal.append("fail")
            flaky.failed.set()
            raise flaky.error()
        await set_record(task_id, data, ready, expires)
        if ready:
            flaky.journal.append("stored")

    monkeypatch.setattr(backend, "_set", flaky_set)
    broker = conn.broker
    assert isinstance(broker, MemoryBroker)
    for name in ("ack", "requeue"):
        settle: Callable[[Delivery], Awaitable[None]] = getattr(broker, name)
        monkeypatch.setattr(broker, name, _journaled(settle, name, flaky.journal))
    return broker


def _journaled(
    settle: Callable[[Delivery], Awaitable[None]], name: str, journal: list[str]
) -> Callable[[Delivery], Awaitable[None]]:
    async def journaled(delivery: Delivery) -> None:
        journal.append(name)
        await settle(delivery)

    return journaled


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def start(app: Celery, shutdown_timeout: float = 10.0) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(app, concurrency=4, shutdown_timeout=shutdown_timeout)
    return worker, asyncio.get_running_loop().create_task(worker.run())


async def stop(worker: Worker, running: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(running, WAIT)


async def queued(broker: Broker) -> int:
    return sum((await broker.queue_sizes()).values())


async def test_a_result_stored_after_an_outage_runs_its_task_once(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Four stores fail as unreachable: the body ran once, the result is there once the
    store answers, the message was acked only after that (never requeued), and the log
    has one line when storing started failing and one when it worked again."""
    flaky = Flaky(failures=4)
    broker = await patched(app, monkeypatch, flaky)
    runs: list[int] = []

    @app.task(name="retry.double")
    async def double(x: int) -> int:
        runs.append(x)
        return 2 * x

    worker, running = await start(app)
    try:
        with caplog.at_level(logging.INFO, logger="celeriac"):
            assert await (await double.delay(21)).get(timeout=WAIT) == 42
            await eventually(lambda: "ack" in flaky.journal, WAIT, "the ack")
    finally:
        await stop(worker, running)
    assert runs == [21]
    assert flaky.journal == ["fail"] * 4 + ["stored", "ack"]
    assert len(lines(caplog, CANNOT_STORE)) == 1, lines(caplog, "store")
    assert len(lines(caplog, STORED_AGAIN)) == 1, lines(caplog, "store")
    assert not lines(caplog, "worker bug")
    assert await queued(broker) == 0


async def test_a_copy_redelivered_while_the_outcome_waits_is_acked_not_run(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker takes the held message back while its outcome cannot be stored (as
    RabbitMQ does when the connection drops) and hands the worker a redelivered copy: the
    copy waits for the first run's outcome and is acked; the body ran once."""
    flaky = Flaky(failures=10**6)
    broker = await patched(app, monkeypatch, flaky)
    runs: list[int] = []

    @app.task(name="retry.once")
    async def once(x: int) -> int:
        runs.append(x)
        return x

    worker, running = await start(app)
    try:
        with caplog.at_level(logging.DEBUG, logger="celeriac"):
            result = await once.delay(7)
            await asyncio.wait_for(flaky.failed.wait(), WAIT)
            broker._transport.release_owner(broker._owner)  # the "connection" dropped
            waits = "a redelivered copy waits for the outcome of its run here"
            await eventually(lambda: lines(caplog, waits), WAIT, "the copy to wait")
            flaky.failures = 0  # the store is back
            assert await result.get(timeout=WAIT) == 7
            acked = "a redelivered copy of a run of this worker whose outcome is stored"
            await eventually(lambda: lines(caplog, acked), WAIT, "the copy to be acked")
            await eventually(lambda: flaky.journal.count("ack") == 2, WAIT, "both acks")
    finally:
        await stop(worker, running)
    assert runs == [7]
    assert "requeue" not in flaky.journal
    assert await queued(broker) == 0


async def test_a_graceful_stop_gives_up_a_held_outcome_and_requeues_its_message(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store never comes back: the worker's stop waits ``shutdown_timeout``, gives the
    outcome up with a line and puts the message back unacknowledged (at-least-once)."""
    flaky = Flaky(failures=10**6)
    broker = await patched(app, monkeypatch, flaky)

    @app.task(name="retry.held")
    async def held() -> str:
        return "done"

    worker, running = await start(app, shutdown_timeout=0.3)
    with caplog.at_level(logging.INFO, logger="celeriac"):
        await held.delay()
        await asyncio.wait_for(flaky.failed.wait(), WAIT)
        await stop(worker, running)
    assert "ack" not in flaky.journal and flaky.journal[-1] == "requeue"
    assert len(lines(caplog, "was not stored before the worker stopped")) == 1
    assert await queued(broker) == 1


async def test_a_refused_result_is_a_failure_that_says_why_and_holds_nothing_up(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store refuses a result once: the task's FAILURE names the refusal, it is not
    retried, and the next task's result comes at once."""
    flaky = Flaky(failures=1, error=lambda: ResultRejected("test: OOM command not allowed"))
    await patched(app, monkeypatch, flaky)

    @app.task(name="retry.echo")
    async def echo(x: int) -> int:
        return x

    worker, running = await start(app)
    try:
        with caplog.at_level(logging.INFO, logger="celeriac"):
            refused = await echo.delay(1)
            with pytest.raises(ResultRejected, match="OOM command not allowed"):
                await refused.get(timeout=WAIT)
            assert await (await echo.delay(2)).get(timeout=WAIT) == 2
    finally:
        await stop(worker, running)
    assert flaky.journal[:3] == ["fail", "stored", "ack"]
    assert not lines(caplog, CANNOT_STORE)


async def test_a_result_over_result_max_size_is_a_failure_naming_the_setting(
    app: Celery,
) -> None:
    app.conf.result_max_size = 1000

    @app.task(name="retry.big")
    async def big(n: int) -> str:
        return "x" * n

    async def work() -> Any:
        with pytest.raises(ResultTooLarge, match=r"over result_max_size=1000"):
            await (await big.delay(5000)).get(timeout=WAIT)
        return await (await big.delay(10)).get(timeout=WAIT)

    await app.close()  # connect again: the backend reads result_max_size when it is made
    async with app.setup():
        worker, running = await start(app)
        try:
            assert await work() == "x" * 10
        finally:
            await stop(worker, running)
