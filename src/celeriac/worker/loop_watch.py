"""Reports an event loop that a task blocks: the top cause of "tasks hang".

An ``async def`` task that calls ``time.sleep`` or ``requests.get`` stops every other task of
the worker, its acks and its broker heartbeats, and nothing in the loop can notice while it
happens. So the check runs in a thread of its own: the loop refreshes a timestamp every
``tick`` seconds with a timer callback, and the thread, waking as often, logs one warning
once that timestamp is older than the threshold, while the loop is still blocked. It names
the task the loop is running at that moment (``asyncio.current_task`` of the loop, looked up
in the worker's registry of running requests) and the line the loop's thread is on, with the fix.

The only cost on the loop is the timer callback, a few times a second: nothing per task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("celeriac.worker")

#: The longest time between two refreshes of the timestamp (shorter for a small threshold,
#: so that an ordinary wait between refreshes never looks like a block).
MAX_TICK = 0.25
#: The worker's own source files (this package) begin with this.
_WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Tasks named at most in one warning when the blocking one is not known.
MAX_NAMED = 5

#: The ``async def`` tasks running now (a plain ``def`` runs in a thread and cannot block the
#: loop), each as the asyncio task that runs it and its name as the warning gives it,
#: ``name[id]``. Called from the watch's thread.
AsyncTasks = Callable[[], "list[tuple[asyncio.Task[Any] | None, str]]"]


class LoopWatch:
    """Watches ``loop`` from a thread; ``running`` lists the async tasks running (read only
    when a block is reported)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, threshold: float, running: AsyncTasks
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.tick = min(MAX_TICK, threshold / 4)
        self._running = running
        self._beat = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="celeriac-loop-watch", daemon=True)

    def start(self) -> None:
        """Start refreshing and watching (call it on the loop's thread)."""
        self._loop_thread = threading.get_ident()
        self._refresh()
        self._thread.start()

    def stop(self) -> None:
        """Stop both (on the loop's thread); the thread ends at once."""
        if self._timer is not None:
            self._timer.cancel()
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _refresh(self) -> None:
        self._beat = time.monotonic()
        self._timer = self.loop.call_later(self.tick, self._refresh)

    def _watch(self) -> None:
        reported: float | None = None  # the timestamp of the block already reported
        while not self._stopped.wait(self.tick):
            beat = self._beat
            blocked = time.monotonic() - beat
            if blocked > self.threshold and beat != reported:
                reported = beat
                self._report(blocked)
            elif reported is not None and beat != reported:
                logger.info(
                    "the event loop runs again, after about %.1f s blocked", beat - reported
                )
                reported = None

    def _report(self, blocked: float) -> None:
        culprit = self._culprit()
        logger.warning(
            "the event loop has been blocked for %.1f s (worker_loop_block_warning=%g) %s%s:"
            " no other task, ack or broker heartbeat runs meanwhile; await the blocking call"
            " (asyncio.sleep, an async client, await asyncio.to_thread(...)) or make the task"
            " a plain def, which runs in a thread",
            blocked,
            self.threshold,
            culprit,
            self._where(),
        )

    def _culprit(self) -> str:
        """The task the loop is running now, else every async task running."""
        try:
            current = asyncio.current_task(self.loop)
            running = self._running()
        except Exception as exc:  # the warning still goes out, without the names
            return f"(its tasks could not be listed: {exc})"
        culprit = next((name for task, name in running if task is current), None)
        if current is not None and culprit is not None:
            return f"by task {culprit}"
        if not running:
            return "by no async task (worker code or a callback)"
        listed = ", ".join(name for _, name in running[:MAX_NAMED])
        more = f" and {len(running) - MAX_NAMED} more" if len(running) > MAX_NAMED else ""
        return f"while these async tasks run: {listed}{more}"

    def _where(self) -> str:
        """The line of the task's own code the loop's thread is on: the last frame outside
        the worker's own code before it, walking out from the innermost (so a blocking
        library call is named by the task's line that made it); the innermost frame when
        the worker's code is not on the stack (a callback)."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        innermost = frame
        chosen: FrameType | None = None
        while frame is not None:
            if frame.f_code.co_filename.startswith(_WORKER_DIR):
                break
            chosen = frame
            frame = frame.f_back
        else:
            chosen = innermost
        if chosen is None:
            return ""
        code = chosen.f_code
        return f", at {code.co_filename}:{chosen.f_lineno} in {code.co_name}"
