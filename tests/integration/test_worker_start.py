"""What a worker says when it starts: ``ready`` only once its broker answered (a broker out
of reach at start is waited for, as Celery's worker does, and a signal still stops it), and
where results go, which for RabbitMQ without a result backend is nowhere (Celery's default),
never a ``./celeriac.db`` of the worker's own choosing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac import Celery
from celeriac.errors import ResultsNotStored
from services import amqp_vhost_url, delete_amqp_queues, free_port

from .conftest import READY, WorkerProcess
from .private_redis import PrivateRedis

APP = """\
from celeriac import Celery

app = Celery("started")


@app.task(name="started.add")
def add(x: int, y: int) -> int:
    return x + y
"""


Start = Callable[..., WorkerProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(broker_url, *args)``: ``celeriac -A started:app worker`` in ``tmp_path`` with
    that broker and no result backend set."""
    (tmp_path / "started.py").write_text(APP)
    workers: list[WorkerProcess] = []

    def start(broker: str, *args: str) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        env["CELERIAC_BROKER_URL"] = broker
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "celeriac.cli", "-A", "started:app", "worker", *args]
        worker = WorkerProcess(argv, env, tmp_path)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def test_a_worker_is_ready_only_once_its_broker_answers(start: Start, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis")
    try:
        worker = start(server.url(0))
        worker.wait_for(f"is not ready: Redis at {server.url(0)} is unreachable")
        server.start()
        ready = worker.wait_for(READY)
        assert f"broker {server.url(0)}, results {server.url(0)}" in ready
        lines = worker.log().splitlines()
        assert [i for i, line in enumerate(lines) if "is not ready" in line] == [0], lines

        client = Celery("client", broker=server.url(0), set_as_current=False)
        try:
            assert client.send_task("started.add", (2, 3)).get(timeout=15) == 5
        finally:
            client.close()
        assert worker.stop() == 0
    finally:
        server.close()


def test_a_signal_stops_a_worker_still_waiting_for_its_broker(start: Start) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    worker = start(url)
    worker.wait_for("is not ready: RabbitMQ at amqp://guest:***@127.0.0.1:")
    assert worker.stop(signal.SIGTERM, timeout=15) == 0
    assert READY not in worker.log()
    assert "stopped before its broker answered" in worker.log()


def test_rabbitmq_without_a_result_backend_stores_no_results_and_says_so(
    start: Start, tmp_path: Path, amqp_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a default SQLite store would appear
    for name in [n for n in os.environ if n.startswith("CELERIAC_")]:
        monkeypatch.delenv(name)
    url = amqp_vhost_url(amqp_vhost)
    queue = f"started-{uuid.uuid4().hex}"
    worker = start(url, "-Q", queue)
    ready = worker.wait_for(READY)
    assert ready.endswith("results not stored (no result_backend is set)"), ready

    client = Celery("client", broker=url, set_as_current=False)
    try:
        result = client.send_task("started.add", (2, 3), queue=queue)
        worker.wait_for(f"task started.add[{result.id}] succeeded")
        with pytest.raises(ResultsNotStored, match=r"no result backend is configured.*rpc://"):
            result.get(timeout=5)
        with pytest.raises(NotImplementedError):  # what Celery raises there
            _ = result.state
    finally:
        client.close()
        asyncio.run(delete_amqp_queues([queue], url))
    assert worker.stop() == 0
    assert not (tmp_path / "celeriac.db").exists()
    assert not list(tmp_path.glob("*.db*"))
