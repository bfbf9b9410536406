"""The supervisor: runs a command's worker pools as child processes and keeps them running.

Each child is an ordinary ``celeriac worker`` process (started with ``--child``) on its
pool's queues; it builds its own resources and connections, so nothing crosses a process
boundary. The supervisor:

- replaces a child that dies (killed, crashed, recycled after ``worker_max_tasks_per_child``
  tasks or above ``worker_max_memory_per_child``). What a killed child held goes back to
  its queue through the broker's own recovery (held messages are restored once their holder
  stops refreshing them), so nothing is lost;
- stops everything, and exits 1, when a child fails right after it starts (a bad setting, a
  resource that cannot be built): restarting it could only fail again;
- on SIGTERM or SIGINT asks every child to stop gracefully (each finishes its running tasks
  within ``worker_shutdown_timeout``) and waits for them; a second signal makes the children
  stop at once (their running tasks go back to the queue).

Children run in their own session (process group), so a Ctrl-C in the terminal reaches only the
supervisor (which forwards one SIGTERM), and they ask the kernel to send them SIGTERM if the
supervisor dies, so they never outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from celeriac.worker.pools import PoolSpec

log = logging.getLogger("celeriac.supervisor")

#: A child that fails within this many seconds of its start is not restarted.
STARTUP_GRACE = 5.0
#: Longest pause between restarts of a child that keeps dying.
MAX_BACKOFF = 5.0


class Supervisor:
    """Keeps ``pools`` running as ``celeriac -A app worker --child`` processes."""

    def __init__(self, app_spec: str, pools: Sequence[PoolSpec], child_args: Sequence[str]):
        self.app_spec = app_spec
        self.pools = list(pools)
        self.child_args = list(child_args)
        self._children: set[asyncio.subprocess.Process] = set()
        self._stopping = False
        self._signals = 0
        self._failure: str | None = None

    def argv(self, pool: PoolSpec, index: int) -> list[str]:
        argv = [sys.executable, "-m", "celeriac.cli", "-A", self.app_spec, "worker"]
        argv += ["--child", f"{pool.name}-{index + 1}", "-Q", ",".join(pool.queues)]
        if pool.concurrency is not None:
            argv += ["-c", str(pool.concurrency)]
        return argv + self.child_args

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, 1 if a child failed at start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            slots = [
                loop.create_task(self._keep(pool, index))
                for pool in self.pools
                for index in range(pool.processes)
            ]
            total = len(slots)
            names = ", ".join(f"{p.name} ({p.processes}x {','.join(p.queues)})" for p in self.pools)
            log.info("supervising %d worker process(es): %s", total, names)
            await asyncio.gather(*slots)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._failure is not None:
            print(f"celeriac: error: {self._failure}", file=sys.stderr)
            return 1
        log.info("all worker processes stopped")
        return 0

    def stop(self) -> None:
        """First call: every child stops gracefully. Second: they stop at once."""
        self._signals += 1
        self._stopping = True
        if self._signals == 1:
            log.info("stopping %d worker process(es) gracefully", len(self._children))
        else:
            log.warning("stopping the worker processes at once: running tasks are requeued")
        # A child counts the signals it gets: its second one stops it at once.
        sig = signal.SIGTERM if self._signals == 1 else signal.SIGINT
        for child in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    async def _keep(self, pool: PoolSpec, index: int) -> None:
        """One process slot of ``pool``: start a child, and another whenever one ends."""
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        while not self._stopping:
            started = loop.time()
            child = await asyncio.create_subprocess_exec(
                *self.argv(pool, index), start_new_session=True
            )
            self._children.add(child)
            if self._stopping:  # a signal came while it started
                child.send_signal(signal.SIGTERM)
            code = await child.wait()
            self._children.discard(child)
            if self._stopping:
                return
            lived = loop.time() - started
            name = f"{pool.name}-{index + 1}"
            if code > 0 and lived < STARTUP_GRACE:
                self._failure = (
                    f"worker process {name} (pid {child.pid}) exited with status {code}"
                    f" {lived:.1f} s after it started; see its error above"
                )
                self.stop()
                return
            if code < 0:
                log.warning(
                    "worker process %s (pid %d) was killed by %s; starting another",
                    name,
                    child.pid,
                    signal.Signals(-code).name,
                )
            else:
                log.info(
                    "worker process %s (pid %d) ended (%d); starting another", name, child.pid, code
                )
            quick_deaths = quick_deaths + 1 if lived < STARTUP_GRACE else 0
            if quick_deaths:
                await asyncio.sleep(min(MAX_BACKOFF, 0.1 * 2**quick_deaths))
