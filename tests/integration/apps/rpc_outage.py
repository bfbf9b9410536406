"""A task for the rpc:// outage test: each run leaves a line in ``<marks>/<name>.runs``, then
waits until the test leaves the ``gate`` mark (so it ends when the test says, e.g. while
RabbitMQ is stopped). Broker and results come from the environment (``CELERIAC_BROKER_URL``,
``CELERIAC_RESULT_BACKEND=rpc://``, ``CELERIAC_TEST_MARKS``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celery

app = Celery("rpc_outage")
MARKS = Path(os.environ.get("CELERIAC_TEST_MARKS", "/tmp"))


@app.task(name="rpc_outage.finish_when")
def finish_when(name: str, gate: str) -> str:
    with open(MARKS / f"{name}.runs", "a") as runs:
        runs.write(f"{os.getpid()}\n")
    while not (MARKS / gate).exists():  # the task's own work: waiting for the test's signal
        time.sleep(0.01)
    return name


@app.task(name="rpc_outage.text")
def text(size: int) -> str:
    return "x" * size
