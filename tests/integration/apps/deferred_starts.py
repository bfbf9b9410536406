"""A task that records each of its starts (time, pid, argument), for the tests that count
how often a deferred message runs."""

from __future__ import annotations

import os
import time

from basic import app, mark


@app.task(name="deferred.record")
def record(n: int) -> int:
    mark("starts", f"{time.time()} {os.getpid()} {n}")
    return n
