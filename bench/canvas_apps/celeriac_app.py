"""celeriac's side: ``celeriac -A canvas_apps.celeriac_app:app worker -c 100``.

``async def`` tasks: they run on the worker's event loop, celeriac's way for I/O-bound work.
"""

from __future__ import annotations

from canvas_apps import CELERIAC_PREFIX_VARIABLE, settings
from celeriac import Celery

app = Celery("canvasbench")
app.conf.update(settings(CELERIAC_PREFIX_VARIABLE))


@app.task(name="canvasbench.inc")
async def inc(x: int) -> int:
    """A chain step, a group member and a chord header task: its input + 1."""
    return x + 1


@app.task(name="canvasbench.tsum")
async def tsum(values: list[int]) -> int:
    """The chord's body: the sum of its header's results."""
    return sum(values)
