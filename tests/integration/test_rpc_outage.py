"""rpc:// results through a RabbitMQ outage (issue 17, finding 7): tasks that end while
RabbitMQ is stopped run once, and the caller's ``get()`` waits the outage out. And a result
RabbitMQ refuses (over its ``max_message_size``) is the task's FAILURE, not an outage.

A private RabbitMQ node (``private_rabbitmq.py``) is stopped (``rabbitmqctl stop_app``) while
a worker process runs five tasks; the test then lets them end, so every result is stored
while RabbitMQ is away, and starts the node again. The test process is the caller: its
``get()``s (timeout longer than the outage) started before the stop. RabbitMQ takes back the
worker's unacknowledged messages when its connection drops and deletes the caller's reply
queue (auto-delete) with the caller's; before the fix the result publish failed, the worker
logged "worker bug", requeued the message and ran the task again, and ``get()`` raised
BrokerError early in the outage.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.errors import ResultRejected
from services import wait_until

from .conftest import APPS, READY, WorkerProcess
from .private_rabbitmq import PrivateRabbitMQ

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TASKS = 5
#: Each get()'s timeout: longer than the outage (stop_app, start_app: 10-30 s here).
GET_TIMEOUT = 150.0
GATE = "go"


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateRabbitMQ]:
    private = PrivateRabbitMQ()
    try:
        private.start()
        yield private
    finally:
        private.close()


@pytest.fixture
def marks(tmp_path: Path, node: PrivateRabbitMQ, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Both sides on the private node with rpc:// results; the runs recorded in ``marks``."""
    directory = tmp_path / "marks"
    directory.mkdir()
    monkeypatch.setenv("CELERIAC_BROKER_URL", node.url)
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", "rpc://")
    monkeypatch.setenv("CELERIAC_TEST_MARKS", str(directory))
    return directory


@pytest.fixture
def worker(marks: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "celeriac.cli", "-A", "rpc_outage:app", "worker"]
    process = WorkerProcess([*argv, "-l", "info", "-c", str(TASKS)], env, tmp_path)
    try:
        process.wait_for(READY)
        yield process
    finally:
        process.close()


def runs(marks: Path, name: str) -> int:
    path = marks / f"{name}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def settled(node: PrivateRabbitMQ) -> bool:
    """The task queue holds nothing, delivered or not: no copy is left to run again."""
    table = node.ctl("list_queues", "name", "messages", "--no-table-headers", "--quiet")
    rows = dict(line.split() for line in table.splitlines() if line.strip())
    return rows.get("celery") == "0"


async def test_tasks_that_end_while_rabbitmq_is_down_run_once_and_their_results_arrive(
    node: PrivateRabbitMQ, marks: Path, worker: WorkerProcess
) -> None:
    import rpc_outage

    names = [f"task{i}" for i in range(TASKS)]
    async with rpc_outage.app.setup():
        results = [await rpc_outage.finish_when.delay(name, GATE) for name in names]
        for name in names:
            await asyncio.to_thread(wait_until, lambda n=name: runs(marks, n), 30, f"{name} to run")
        waiting = [asyncio.ensure_future(r.get(timeout=GET_TIMEOUT)) for r in results]

        await asyncio.to_thread(node.stop_app)
        (marks / GATE).touch()  # the tasks end now, with RabbitMQ away
        await asyncio.to_thread(worker.wait_for, " succeeded in ", 30, TASKS)
        assert not any(w.done() for w in waiting), [w for w in waiting if w.done()]
        await asyncio.to_thread(node.start_app)
        up_at = time.monotonic()

        values = await asyncio.gather(*waiting)
        got_at = time.monotonic()
    assert values == names
    assert got_at >= up_at
    await asyncio.to_thread(worker.wait_for, "stored results in the result store", 30)
    await asyncio.to_thread(wait_until, lambda: settled(node), 30, "the task queue to empty")
    assert {name: runs(marks, name) for name in names} == dict.fromkeys(names, 1), worker.log()
    assert worker.stop(timeout=30) == 0, worker.log()
    log = worker.log()
    assert "worker bug" not in log, log
    assert log.count("cannot store the SUCCESS state") == 1, log
    # RabbitMQ gave every message back when the worker's connection dropped: each copy was
    # acknowledged once its first run's result was stored, not run.
    assert log.count("a redelivered copy of a run of this worker") == TASKS, log


async def test_a_result_over_rabbitmq_max_message_size_is_a_failure_not_an_outage(
    node: PrivateRabbitMQ, marks: Path, worker: WorkerProcess
) -> None:
    """RabbitMQ closes the channel of a publish over ``max_message_size`` (here 64 KiB, under
    ``result_max_size``): that result is refused (a FAILURE that says so), not retried, and
    the next one comes at once."""
    import rpc_outage

    node.ctl("eval", "application:set_env(rabbit, max_message_size, 65536).")
    try:
        async with rpc_outage.app.setup():
            refused = await rpc_outage.text.delay(100_000)
            with pytest.raises(ResultRejected, match="larger than configured max size"):
                await refused.get(timeout=30)
            assert await (await rpc_outage.text.delay(3)).get(timeout=10) == "xxx"
    finally:
        node.ctl("eval", "application:unset_env(rabbit, max_message_size).")
    assert worker.stop(timeout=30) == 0, worker.log()
    log = worker.log()
    assert "cannot store" not in log and "worker bug" not in log, log
