"""``celeriac events --dump`` against a real worker process, on every broker a worker reaches:
the worker's coming online, its heartbeats and a task's events, one line each as ``celery
events --dump`` prints them, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import APPS, WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


@pytest.fixture
def dump(broker_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """``celeriac -A basic:app events --dump`` running, its capture started."""
    env = {**os.environ, "PYTHONPATH": str(APPS), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "celeriac.cli", "-A", "basic:app", "events", "--dump"]
    watching = WorkerProcess(argv, env, tmp_path)
    try:
        watching.wait_for("starting capture", TIMEOUT)
        yield watching
    finally:
        watching.close()


def test_events_dump_shows_a_worker_and_its_tasks(
    dump: WorkerProcess, start_worker: Callable[..., WorkerProcess], basic: Any
) -> None:
    worker = start_worker("-E", "--heartbeat-interval", "0.5", "-n", "watched@events")
    dump.wait_for("] started: ", TIMEOUT)  # worker-online, as Celery's dumper words it
    dump.wait_for("] heartbeat: ", TIMEOUT, count=2)
    result = basic.add.delay(2, 3)
    assert result.get(timeout=TIMEOUT) == 5
    received = dump.wait_for(f"task received: basic.add({result.id})", TIMEOUT)
    assert "args=(2, 3)" in received  # the argsrepr, as Celery's worker sends it
    succeeded = dump.wait_for("task succeeded:", TIMEOUT)
    assert result.id in succeeded and "result=5" in succeeded
    worker.stop()
    assert "watched@events" in dump.wait_for("] shutdown: ", TIMEOUT)  # worker-offline
    assert dump.stop(signal.SIGINT) == 130
