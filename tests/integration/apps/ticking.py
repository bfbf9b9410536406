"""A task for the graceful-stop test: it ends on the next tick of a shared wall clock, so all
the tasks a worker runs end, and are acknowledged, in the same instant, as a cohort of
equally long tasks does under a deep backlog.

Each run appends ``start <id> <pid>`` and ``end <id> <pid>`` to the file
``CELERIAC_TEST_RUNS`` (one short write per line: whole lines, whatever the interleaving), so
the test counts runs by task id. No result backend: the message is acknowledged as soon as
the task returns.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from celeriac import Celery

app = Celery("ticking")
RUNS_ENV = "CELERIAC_TEST_RUNS"


def _record(kind: str, task_id: str) -> None:
    with open(os.environ[RUNS_ENV], "a") as runs:
        runs.write(f"{kind} {task_id} {os.getpid()}\n")


@app.task(bind=True, acks_late=True, ignore_result=True)
async def tick(self: Any, period: float) -> None:
    """Wait for the next multiple of ``period`` seconds of wall-clock time."""
    _record("start", self.request.id)
    await asyncio.sleep(period - time.time() % period)
    _record("end", self.request.id)
