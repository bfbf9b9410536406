"""The supervisor: runs a command's worker pools (and, for ``celeriac run``, its web server)
as child processes and keeps them running.

Each child is an ordinary ``celeriac worker`` process (started with ``--child``) on its
pool's queues; it builds its own resources and connections, so nothing crosses a process
boundary. The supervisor:

- tells a start-up failure from a crash by what the child reported, not by how long it lived:
  every worker child inherits the write end of a pipe (its number in ``--ready-fd``) and
  writes one byte on it once its consumer runs, where it logs "ready". A child that ends
  before writing it failed to start (a bad setting, a resource that cannot be built, an app
  that does not import): restarting it could only fail again, so everything stops and the
  command exits 1 with that child's status;
- restarts a child that ends after it started consuming: killed, crashed by a task (one
  poison message must not stop a fleet), or recycled after ``worker_max_tasks_per_child``
  tasks or above ``worker_max_memory_per_child``. It logs one line (which process, its exit
  status or signal, when the next one starts). A child that keeps dying within
  :data:`STABLE_AFTER` seconds of its start waits before each restart, :data:`FIRST_BACKOFF`
  doubled each time up to :data:`MAX_BACKOFF`; one that lived longer resets that. What a
  dead child held goes back to its queue through the broker's own recovery (held messages
  are restored once their holder stops refreshing them), so nothing is lost;
- on SIGTERM or SIGINT asks every child to stop gracefully (each finishes its running tasks
  within ``worker_shutdown_timeout``) and waits for them; a second signal makes the children
  stop at once (their running tasks go back to the queue).

The web server of ``celeriac run`` (uvicorn) has no such pipe, so for it the old rule stays: a
failure (status above 0) within :data:`STARTUP_GRACE` seconds of its start is a start-up
failure (a port in use, an ASGI app that does not import), a later one is restarted.

Children run in their own session (process group), so a Ctrl-C in the terminal reaches only the
supervisor (which forwards one SIGTERM). On Linux they ask the kernel for a SIGTERM when the
supervisor dies (``PR_SET_PDEATHSIG``), so none outlives it, the web server included; worker
children elsewhere notice a new parent within a second and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celeriac.worker.pools import PoolSpec

log = logging.getLogger("celeriac.supervisor")

#: The option that gives a worker child the number of its ready pipe's write end.
READY_FD_OPTION = "--ready-fd"
#: What a worker child writes on that pipe once it consumes.
READY_BYTE = b"r"
#: A child without a ready pipe (the web server) that fails this soon after its start is not
#: restarted.
STARTUP_GRACE = 5.0
#: A child that ran this long before it ended is restarted at once; quicker ends back off.
STABLE_AFTER = 5.0
#: Pause before restarting a child that ended quickly; it doubles with each such end in a row.
FIRST_BACKOFF = 0.2
#: Longest pause between restarts of a child that keeps dying.
MAX_BACKOFF = 5.0


@dataclass(frozen=True, slots=True)
class Child:
    """One process slot: its name (in logs), the command that starts it, and whether that
    command reports on a ready pipe that it consumes (``--ready-fd``; the web server does
    not)."""

    name: str
    argv: tuple[str, ...]
    reports_ready: bool = True


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


def ready_reporter(fd: int) -> Callable[[], None]:
    """What a worker child calls once it consumes: one byte on its supervisor's pipe (the
    write end ``fd`` it inherited), then the pipe is closed. Calls after the first do
    nothing, so a reused descriptor number is never closed by mistake."""
    os.set_inheritable(fd, False)  # the processes its tasks start have nothing to report
    reported = False

    def report() -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody is listening
            os.write(fd, READY_BYTE)
        with contextlib.suppress(OSError):
            os.close(fd)

    return report


class _ReadyPipe:
    """The supervisor's end of one child's ready pipe. Read once the child has ended: a byte
    written before the child died is still in the pipe, so there is no race with its exit."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)

    def close_write_end(self) -> None:
        """Once the child started: its copy must be the only one, so its death closes it."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def reported(self) -> bool:
        """Whether the child wrote its byte; closes the pipe."""
        try:
            return os.read(self.read_fd, 1) == READY_BYTE
        except BlockingIOError:  # still open elsewhere (a grandchild inherited it), empty
            return False
        finally:
            self.close()

    def close(self) -> None:
        self.close_write_end()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class Backoff:
    """Pauses between the restarts of one slot (see the module docstring)."""

    def __init__(self) -> None:
        self.quick_ends = 0

    def after(self, lived: float) -> float:
        """Seconds to wait before the next start, after a child that ran ``lived`` seconds."""
        if lived >= STABLE_AFTER:
            self.quick_ends = 0
            return 0.0
        self.quick_ends += 1
        doublings = min(self.quick_ends - 1, 32)  # past the cap anyway; keeps 2**n small
        return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2**doublings))


class Supervisor:
    """Keeps ``children`` running (see the module docstring)."""

    def __init__(self, children: Sequence[Child], summary: str) -> None:
        self.children = list(children)
        self.summary = summary
        self._children: set[asyncio.subprocess.Process] = set()
        self._stopping = False
        self._stop_requested = asyncio.Event()
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
        self._stop_requested.set()
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
        """One process slot: start a child, and another whenever one ends after it started."""
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while not self._stopping:
            started = loop.time()
            child, code, ready = await self._run_child(slot)
            if self._stopping:
                return
            lived = loop.time() - started
            failed = _start_failure(slot, code, ready, lived)
            if failed is not None:
                self._failure = f"process {slot.name} (pid {child.pid}) {failed}"
                self.stop()
                return
            delay = backoff.after(lived)
            _log_end(slot, child.pid, code, delay)
            if delay:
                with contextlib.suppress(TimeoutError):  # a stop ends the pause
                    await asyncio.wait_for(self._stop_requested.wait(), delay)

    async def _run_child(self, slot: Child) -> tuple[asyncio.subprocess.Process, int, bool]:
        """Start one child of ``slot`` and wait for it to end: the process, its return code
        and whether it reported that it consumed."""
        pipe = _ReadyPipe() if slot.reports_ready else None
        argv = slot.argv
        if pipe is not None:
            argv = (*argv, READY_FD_OPTION, str(pipe.write_fd))
        try:
            child = await asyncio.create_subprocess_exec(
                *argv,
                start_new_session=True,
                preexec_fn=self._die_with_parent,
                pass_fds=() if pipe is None else (pipe.write_fd,),
            )
        except BaseException:
            if pipe is not None:
                pipe.close()
            raise
        if pipe is not None:
            pipe.close_write_end()  # the child's copy is the only one left
        self._children.add(child)
        if self._stopping:  # a signal came while it started
            child.send_signal(signal.SIGTERM)
        try:
            code = await child.wait()
        finally:
            self._children.discard(child)
            ready = pipe is not None and pipe.reported()
        return child, code, ready


def _start_failure(slot: Child, code: int, ready: bool, lived: float) -> str | None:
    """Why a child that ended failed to start (the command stops then), or None if it is to
    be restarted."""
    if slot.reports_ready:
        if ready:
            return None
        return (
            f"{_how_it_ended(code)} before it started consuming, {lived:.1f} s after its"
            " start; see its error above"
        )
    if code > 0 and lived < STARTUP_GRACE:
        return f"exited with status {code} {lived:.1f} s after it started; see its error above"
    return None


def _log_end(slot: Child, pid: int, code: int, delay: float) -> None:
    """One line on a child that is to be replaced: which, how it ended, when the next one
    starts."""
    when = f"in {delay:.1f} s" if delay else "at once"
    # Only a worker child that reported it consumed gets here (or the web server).
    what = f"process {slot.name} (pid {pid})" + (
        ", which had been consuming," if slot.reports_ready else ""
    )
    if code == 0:  # recycled (worker_max_tasks/memory_per_child), or the server just ended
        log.info("%s ended (status 0); starting another %s", what, when)
    else:
        log.warning("%s %s; starting another %s", what, _how_it_ended(code), when)


def _how_it_ended(code: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL`` (a return code below 0)."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


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
