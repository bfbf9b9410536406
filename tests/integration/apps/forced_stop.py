"""A plain ``def`` task whose first run blocks its thread (a forced stop's test)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celery

app = Celery("forced_stop")
MARKS = Path(os.environ.get("CELERIAC_TEST_MARKS", "/tmp"))


@app.task
def sleeps_once(name: str, seconds: float) -> int:
    """Count its runs in a mark file; the first one sleeps ``seconds`` in its thread."""
    runs = MARKS / f"{name}.runs"
    with open(runs, "a") as f:
        f.write("run\n")
    count = len(runs.read_text().splitlines())
    if count == 1:
        time.sleep(seconds)
    return count
