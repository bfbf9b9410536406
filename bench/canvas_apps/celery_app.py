"""Celery's side: ``celery -A canvas_apps.celery_app worker -P threads -c 100``.

Plain ``def`` tasks: the threads pool runs them, Celery's best pool for I/O-bound work.
"""

from __future__ import annotations

from celery import Celery

from canvas_apps import CELERY_PREFIX_VARIABLE, settings

app = Celery("canvasbench")
app.conf.update(settings(CELERY_PREFIX_VARIABLE), broker_connection_retry_on_startup=True)


@app.task(name="canvasbench.inc")
def inc(x: int) -> int:
    """A chain step, a group member and a chord header task: its input + 1."""
    return x + 1


@app.task(name="canvasbench.tsum")
def tsum(values: list[int]) -> int:
    """The chord's body: the sum of its header's results."""
    return sum(values)
