"""An ``async def`` task that blocks the event loop (the loop watch's test)."""

from __future__ import annotations

import time

from celeriac import Celery

app = Celery("blocking")
app.conf.worker_loop_block_warning = 0.3


def sleep_in_a_helper(seconds: float) -> None:
    time.sleep(seconds)


@app.task
async def blocks_the_loop(seconds: float) -> str:
    sleep_in_a_helper(seconds)  # the line the warning names
    return "done"
