"""A result the store can never take is that task's FAILURE, not an outage that holds up every
later result (issue 17, finding 9: a result Redis refused was retried until shutdown).

Redis is a private ``redis-server`` of the test's own with ``proto-max-bulk-len 1mb`` (its
smallest), so a 2 MB result is over Redis's limit without allocating 512 MB; Redis answers
such a command with a protocol error and drops the connection, which looked like an outage.
Three refusals: ``result_max_size`` (checked before any store), Redis's bulk limit, and an
error reply (``OOM`` under ``maxmemory``). In each, a later task's result comes at once. The
broker is the memory broker (``maxmemory`` would refuse its writes too); the worker runs in
the test's loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from celeriac import Celery
from celeriac.errors import ResultRejected, ResultTooLarge
from celeriac.worker.worker import Worker
from services import eventually

from .private_redis import PrivateRedis

pytestmark = pytest.mark.integration

BIG = 2 * 1024 * 1024  # characters of the refused result: over the server's 1 MiB
WAIT = 20.0
#: How soon a result must come once nothing holds it up (a store retried forever never does).
PROMPT = 5.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    private = PrivateRedis(tmp_path, options=("--proto-max-bulk-len", "1mb"))
    private.start()
    try:
        assert private.client.config_get("proto-max-bulk-len") == {
            "proto-max-bulk-len": str(1024 * 1024)
        }
        yield private
    finally:
        private.close()


def make_app(server: PrivateRedis, **settings: object) -> Celery:
    app = Celery("limits", broker=f"memory://{uuid.uuid4().hex}", backend=server.url(1), **settings)

    @app.task(name="limits.text")
    async def text(size: int) -> str:
        return "x" * size

    return app


@pytest.fixture
async def running(server: PrivateRedis) -> AsyncIterator[Celery]:
    """An app whose worker runs in this loop (default settings); stopped afterwards."""
    async with worker_for(make_app(server)) as app:
        yield app


@asynccontextmanager
async def worker_for(app: Celery) -> AsyncIterator[Celery]:
    """The app connected and a worker consuming its queue, stopped gracefully at the end."""
    async with app.setup():
        worker = Worker(app, concurrency=4)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            yield app
            assert not running.done(), f"the worker stopped: {running!r}"
        finally:
            worker.stop()
            await asyncio.wait_for(running, WAIT)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def later_task_is_prompt(app: Celery) -> None:
    """A small result after the refused one comes within PROMPT seconds."""
    assert await (await app.send_task("limits.text", (3,))).get(timeout=PROMPT) == "xxx"


async def test_a_result_over_result_max_size_is_a_failure_naming_the_setting(
    server: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    async with worker_for(make_app(server, result_max_size=64 * 1024)) as app:
        with caplog.at_level(logging.INFO, logger="celeriac"):
            refused = await app.send_task("limits.text", (BIG,))
            with pytest.raises(ResultTooLarge, match=r"over result_max_size=65536"):
                await refused.get(timeout=WAIT)
            await later_task_is_prompt(app)
    assert len(lines(caplog, "could not be stored")) == 1
    assert not lines(caplog, "unreachable")


async def test_a_result_over_redis_bulk_limit_is_a_failure_naming_it(
    server: PrivateRedis, running: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """``result_max_size`` (16 MiB) lets the 2 MB result through; Redis's 1 MiB would not."""
    with caplog.at_level(logging.INFO, logger="celeriac"):
        refused = await running.send_task("limits.text", (BIG,))
        with pytest.raises(ResultRejected, match=r"proto-max-bulk-len of 1048576 bytes"):
            await refused.get(timeout=WAIT)
        await later_task_is_prompt(running)
    assert not lines(caplog, "unreachable"), lines(caplog, "unreachable")


async def test_an_error_reply_is_not_an_outage(
    server: PrivateRedis, running: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``maxmemory`` Redis answers every write ``OOM``: the result and the FAILURE
    that would replace it are both refused and logged, once each, not retried; once memory
    is there again, the next result comes at once."""
    await later_task_is_prompt(running)  # the worker is consuming: its broker writes are done
    server.client.config_set("maxmemory-policy", "noeviction")
    server.client.config_set("maxmemory", 1)
    try:
        with caplog.at_level(logging.INFO, logger="celeriac"):
            await running.send_task("limits.text", (5,))
            either = "its FAILURE could not be stored either (ResultRejected: Redis at"

            def refused_twice() -> list[str]:
                return lines(caplog, either)

            await eventually(refused_twice, WAIT, "the refusals to be logged")
    finally:
        server.client.config_set("maxmemory", 0)
    assert "OOM command not allowed" in refused_twice()[0]
    assert len(lines(caplog, "its result could not be stored (ResultRejected")) == 1
    assert not lines(caplog, "unreachable"), lines(caplog, "unreachable")
    await later_task_is_prompt(running)
