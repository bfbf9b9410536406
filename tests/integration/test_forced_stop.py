"""A second SIGTERM/SIGINT stops a ``celeriac worker`` at once, even while a plain ``def``
task's thread is still running; its message goes back to the queue (SQLite broker)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True),
]

#: What the stuck task sleeps: far longer than the test waits for the worker to exit.
STUCK_SECONDS = 30.0
#: The longest a forced stop may take (start-up of the interpreter aside, it takes well
#: under a second).
AT_ONCE = 5.0


@pytest.fixture
def forced_stop(broker_url: str) -> Iterator[Any]:
    import forced_stop as module

    yield module
    module.app.close()


def wait_for_lines(path: Path, lines: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= lines):
        assert time.monotonic() < deadline, f"{path.name} never got {lines} line(s)"
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_stops_at_once_and_requeues_a_running_sync_task(
    start_worker: Any, forced_stop: Any, marks: Path, sig: signal.Signals
) -> None:
    worker = start_worker(app="forced_stop:app")
    result = forced_stop.sleeps_once.delay("stuck", STUCK_SECONDS)
    wait_for_lines(marks / "stuck.runs", 1)
    worker.proc.send_signal(sig)
    worker.wait_for("shutting down gracefully")
    worker.proc.send_signal(sig)
    try:
        worker.proc.wait(AT_ONCE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker still runs {AT_ONCE}s after a second signal; log:\n{worker.log()}")
    worker.wait_for("stopping at once")
    assert not result.ready()
    start_worker(app="forced_stop:app")  # the message was put back: it runs again here
    assert result.get(timeout=20) == 2
