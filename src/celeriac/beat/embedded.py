"""``celeriac worker -B``: a scheduler on the worker's own event loop.

It starts once the worker consumes and stops (giving up the lead, so another scheduler
takes over at once) when the worker stops consuming. Unlike Celery's ``-B``, it is safe to
start every worker of a fleet with it: the schedulers elect one leader
(:mod:`celeriac.beat.leadership`), so a scaled-out fleet sends each run once, and a fleet
that loses the worker that led keeps its periodic tasks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from celeriac.beat.scheduler import Scheduler
from celeriac.worker.hooks import WorkerHook

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.beat")


class EmbeddedBeat(WorkerHook):
    """The worker hook that runs a :class:`Scheduler` beside the worker. The scheduler is
    built at once, so a bad ``beat_schedule`` stops the worker's start with its error."""

    def __init__(self, app: Celery) -> None:
        self.scheduler = Scheduler(app)
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    def worker_started(self, worker: Worker) -> None:
        self.scheduler.holder = f"{worker.hostname}:{self.scheduler.holder}"
        self._running = asyncio.get_running_loop().create_task(self._run())

    def worker_stopping(self, worker: Worker) -> None:
        self._stopping.set()

    async def _run(self) -> None:
        try:
            await self.scheduler.run(self._stopping)
        except Exception:  # the worker goes on; its periodic tasks are another's to send
            logger.exception("beat: the embedded scheduler stopped")
