"""The supervisor: runs a command's worker pools (and, for ``celeriac run``, its web server)
as child processes and keeps them running.

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
supervisor (which forwards one SIGTERM). On Linux they ask the kernel for a SIGTERM when the
supervisor dies (``PR_SET_PDEATHSIG``), so none outlives it, the web server included; worker
children elsewhere notice a new parent within a second and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celeriac.worker.pools import PoolSpec

log = logging.getLogger("celeriac.supervisor")

#: A child that fails within this many seconds of its start is not restarted.
STARTUP_GRACE = 5.0
#: Longest pause between restarts of a child that keeps dying.
MAX_BACKOFF = 5.0


@dataclass(frozen=True, slots=True)
class Child:
    """One process slot: its name (in logs) and the command that starts it."""

    name: str
    argv: tuple[str, ...]


def worker_children(
    app_spec: str, pools: Sequence[PoolSpec], child_args: Sequence[str]
) -> list[Child]:
    """A ``celeriac -A app worker --child`` slot for every process of every pool."""
    children = []
    for pool in pools:
        for index in range(pool.processes):
            name = f"{pool.name}-{index + 1}"
            argv = [sys.executable, "-m", "celeriac.cli", "-A", app_spec, "worker"]
            argv += ["--child", name, "-Q", ",".join(pool.queues)]
            if pool.concurrency is not None:
                argv += ["-c", str(pool.concurrency)]
            children.append(Child(name, (*argv, *child_args)))
    return children


def describe(pools: Sequence[PoolSpec]) -> str:
    return ", ".join(f"{p.name} ({p.processes}x {','.join(p.queues)})" for p in pools)


class Supervisor:
    """Keeps ``children`` running (see the module docstring)."""

    def __init__(self, children: Sequence[Child], summary: str) -> None:
        self.children = list(children)
        self.summary = summary
        self._children: set[asyncio.subprocess.Process] = set()
        self._stopping = False
        self._signals = 0
        self._failure: str | None = None
        self._die_with_parent = _parent_death_signal()

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, 1 if a child failed at start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            slots = [loop.create_task(self._keep(child)) for child in self.children]
            log.info("supervising %d process(es): %s", len(slots), self.summary)
            await asyncio.gather(*slots)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._failure is not None:
            print(f"celeriac: error: {self._failure}", file=sys.stderr)
            return 1
        log.info("all processes stopped")
        return 0

    def stop(self) -> None:
        """First call: every child stops gracefully. Second: they stop at once."""
        self._signals += 1
        self._stopping = True
        if self._signals == 1:
            log.info("stopping %d process(es) gracefully", len(self._children))
        else:
            log.warning("stopping the processes at once: running tasks are requeued")
        # A child counts the signals it gets: its second one stops it at once.
        sig = signal.SIGTERM if self._signals == 1 else signal.SIGINT
        for child in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    async def _keep(self, slot: Child) -> None:
        """One process slot: start a child, and another whenever one ends."""
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        name = slot.name
        while not self._stopping:
            started = loop.time()
            child = await asyncio.create_subprocess_exec(
                *slot.argv, start_new_session=True, preexec_fn=self._die_with_parent
            )
            self._children.add(child)
            if self._stopping:  # a signal came while it started
                child.send_signal(signal.SIGTERM)
            code = await child.wait()
            self._children.discard(child)
            if self._stopping:
                return
            lived = loop.time() - started
            if code > 0 and lived < STARTUP_GRACE:
                self._failure = (
                    f"process {name} (pid {child.pid}) exited with status {code}"
                    f" {lived:.1f} s after it started; see its error above"
                )
                self.stop()
                return
            if code < 0:
                log.warning(
                    "process %s (pid %d) was killed by %s; starting another",
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


_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """What a child runs between fork and exec to get SIGTERM when its parent dies (Linux).
    Looked up here, in the parent: a forked child must not import anything."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None).prctl

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent
