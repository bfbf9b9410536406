"""celeriac's own scenarios, on real brokers, with real worker processes.

One command runs every scenario on each broker, repetitions interleaved (scenario A on
every broker, then B, ..., then again), and writes a Markdown table (median, min-max) and
the raw JSON:

    .venv/bin/python bench/scenarios.py --brokers sqlite,redis,amqp --reps 3 --out /tmp/scen

Workers are ``celeriac worker`` processes (``-l warning``: no line per task). Tasks count
themselves without a round trip: each worker process keeps a tally (count, first and last
completion) and sends it to this process in a UDP datagram every 20 ms, so the figures are
celeriac's alone, unlike the shared harness's, whose per-task counter costs a Redis round
trip. Rates run from the first completion to the last, so start-up is excluded; tasks are
queued with ``delay_many`` before the worker starts.

Workers load celeriac from compiled bytecode, as from an installed wheel: where
``PYTHONDONTWRITEBYTECODE`` is set (this machine sets it), an editable install would compile
every module at each worker start, and the compiler's leftovers add about 2 MiB to the RSS
figures; ``main()`` compiles the package first.

Redis: DB 14 (results 15) under a key prefix of its own; RabbitMQ: a queue of its own in the
default vhost (rpc:// results); SQLite: a file in a temporary directory. All deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _local import (
    AMQP_URL,
    REDIS_RESULTS,
    REDIS_URL,
    delete_amqp_queue,
    delete_prefixed,
    own_prefix,
    own_queue,
)

import celeriac

APP = """
import asyncio, json, os, socket, threading, time
from celeriac import Celery

app = Celery("scenarios", broker=os.environ["SCEN_BROKER"], backend=os.environ["SCEN_BACKEND"])
app.conf.update(json.loads(os.environ["SCEN_CONF"]))
_TALLY = ("127.0.0.1", int(os.environ["SCEN_TALLY_PORT"]))
_lock = threading.Lock()
_count, _first, _last, _sender = 0, 0.0, 0.0, None


def _done() -> None:
    global _count, _first, _last, _sender
    with _lock:
        _last = time.time()
        if not _count:
            _first = _last
        _count += 1
        if _sender is None:
            _sender = threading.Thread(target=_send_tallies, daemon=True)
            _sender.start()


def _send_tallies() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = -1
    while True:
        with _lock:
            count, first, last = _count, _first, _last
        if count != sent:
            sent = count
            sock.sendto(f"{os.getpid()} {count} {first!r} {last!r}".encode(), _TALLY)
        time.sleep(0.02)


# Built when a worker process starts: tells the runner its pid (-l warning logs no ready line).
@app.resource
def scenario_ready() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(f"ready {os.getpid()}".encode(), _TALLY)


@app.task(name="scen.noop")
async def noop(payload=None) -> None:
    _done()


@app.task(name="scen.sleep")
async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
    _done()


@app.task(name="scen.light")
def light(n: int) -> int:
    total = sum(range(n))  # a little CPU, in the worker's thread pool
    _done()
    return total


@app.task(name="scen.echo")
async def echo(value):
    return value


@app.task(name="scen.ticks")
async def ticks(n: int, gap: float):
    for i in range(n):
        yield {"i": i, "at": time.time()}  # the wall-clock time just before the yield
        await asyncio.sleep(gap)
"""
READY = re.compile(r"ready: pid (\d+)")


@dataclass
class Broker:
    """Where one broker's scenarios run, and how to clean up after them."""

    name: str
    url: str
    backend: str
    conf: dict[str, Any]
    cleanup: Callable[[], None]


@contextmanager
def broker(name: str, tmp: str) -> Iterator[Broker]:
    queue = own_queue("scen")
    conf: dict[str, Any] = {"task_default_queue": queue, "result_expires": 600}
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if name == "sqlite":
        url = backend = f"sqlite:///{tmp}/scen.db"
    elif name == "redis":
        prefix = own_prefix("scen")
        url, backend = REDIS_URL, REDIS_RESULTS
        conf["broker_transport_options"] = {"global_keyprefix": prefix}
        conf["result_backend_transport_options"] = {"global_keyprefix": prefix}
        cleanup = lambda: (delete_prefixed(prefix), delete_prefixed(prefix, REDIS_RESULTS))  # noqa: E731
    else:
        url, backend = AMQP_URL, "rpc://"
        cleanup = lambda: asyncio.run(delete_amqp_queue(queue))  # noqa: E731
    try:
        yield Broker(name, url, backend, conf, cleanup)
    finally:
        cleanup()


class Tallies:
    """The worker processes' tallies, as their latest datagrams say."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.latest: dict[int, tuple[int, float, float]] = {}

    def reset(self) -> None:
        self.latest.clear()
        self.sock.setblocking(False)
        while True:  # stale datagrams of a finished scenario
            try:
                self.sock.recv(256)
            except BlockingIOError:
                break
        self.sock.settimeout(0.05)

    def wait(
        self,
        n: int,
        worker: Worker,
        timeout: float,
        at: Callable[[int], None] | None = None,
        task_seconds: float = 0.0,
    ) -> float:
        """Block until the workers counted ``n``; tasks/s from the first completion to the
        last, or, for tasks that take ``task_seconds``, from the first start (so the first
        wave counts: n tasks of 1 s at -c n take 1 s, 100% of the ideal, not 0 s).
        ``at(count)`` is called as counts arrive (to read memory midway)."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count()} of {n} tasks finished in {timeout} s")
            if worker.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.proc.returncode}) midway")
            try:
                datagram = self.sock.recv(256).decode().split()
            except TimeoutError:
                continue
            if datagram[0] == "ready":
                continue
            pid, count, first, last = datagram
            self.latest[int(pid)] = (int(count), float(first), float(last))
            if at is not None:
                at(self.count())
        first = min(t[1] for t in self.latest.values())
        last = max(t[2] for t in self.latest.values())
        if task_seconds:
            return n / (last - first + task_seconds)
        return (n - 1) / (last - first)

    def ready(
        self, processes: int, worker: subprocess.Popen[str], timeout: float = 60
    ) -> list[int]:
        """The pids of ``processes`` worker processes, as each says it started."""
        pids: list[int] = []
        deadline = time.monotonic() + timeout
        while len(pids) < processes:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker did not start")
            try:
                datagram = self.sock.recv(256).decode().split()
            except TimeoutError:
                continue
            if datagram[0] == "ready":
                pids.append(int(datagram[1]))
        return pids

    def count(self) -> int:
        return sum(t[0] for t in self.latest.values())


class Worker:
    """``celeriac worker`` on the scenario app, once every process has started.

    ``-l warning`` (no line per task) unless ``log_level`` says otherwise; with ``info`` it
    is ready once each process logs so (the idle memory figure waits for that).
    """

    def __init__(
        self, ctx: Context, *args: str, processes: int = 1, log_level: str = "warning"
    ) -> None:
        cli = [sys.executable, "-m", "celeriac.cli", "-A", "scen_app:app", "worker"]
        self.proc = subprocess.Popen(
            [*cli, "-P", str(processes), "-l", log_level, *args],
            env=ctx.env,
            cwd=ctx.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        if log_level != "info":
            self.pids = ctx.tallies.ready(processes, self.proc)
        else:
            self.pids = []
            while len(self.pids) < processes:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError("the worker exited before it was ready")
                if match := READY.search(line):
                    self.pids.append(int(match[1]))
        # Keep reading: a full pipe would stall the worker.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def rss_mib(self) -> float:
        """Resident memory of every worker process together."""
        return sum(_rss_mib(pid) for pid in self.pids)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def queue_tasks(env: dict[str, str], cwd: str, task: str, n: int, args: list[Any]) -> None:
    """Queue ``n`` calls of ``task(*args)`` from a process of its own (as a web app would),
    1,000 per ``delay_many``."""
    code = (
        "import json, sys, scen_app as a\n"
        "args = json.loads(sys.stdin.read())\n"
        f"for i in range(0, {n}, 1000):\n"
        f"    a.{task}.delay_many([args] * min(1000, {n} - i))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(args),
        env=env,
        cwd=cwd,
        check=True,
        text=True,
    )


# -- scenarios: each returns {figure: value} ---------------------------------------------


def drain(ctx: Context, processes: int, n: int = 20000, payload: int = 0) -> dict[str, float]:
    queue_tasks(ctx.env, ctx.cwd, "noop", n, ["x" * payload] if payload else [])
    worker = Worker(ctx, "-c", "100", processes=processes)
    try:
        return {"tasks/s": ctx.tallies.wait(n, worker, 600)}
    finally:
        worker.stop()


def sleeping(ctx: Context, seconds: float, concurrency: int, n: int) -> dict[str, float]:
    queue_tasks(ctx.env, ctx.cwd, "sleep", n, [seconds])
    worker = Worker(ctx, "-c", str(concurrency))
    try:
        rate = ctx.tallies.wait(n, worker, 600, task_seconds=seconds)
        return {"tasks/s": rate, "% of ideal": 100 * rate / (concurrency / seconds)}
    finally:
        worker.stop()


def light(ctx: Context, n: int = 20000) -> dict[str, float]:
    """Plain ``def`` tasks (a sum of 1,000 numbers) in the worker's thread pool."""
    worker = Worker(ctx, "-c", "100")
    try:
        queue_tasks(ctx.env, ctx.cwd, "light", n, [1000])
        return {"tasks/s": ctx.tallies.wait(n, worker, 600)}
    finally:
        worker.stop()


def memory(ctx: Context, n: int = 100_000) -> dict[str, float]:
    """RSS idle, after 10k no-op tasks and after every 100k up to ``n``: growth that goes
    on from one 100k to the next means a leak."""
    worker = Worker(ctx, "-c", "100", log_level="info")
    figures = {"idle MiB": worker.rss_mib()}
    marks = [10_000, *range(100_000, n, 100_000)]

    def read(count: int) -> None:
        while marks and count >= marks[0]:
            figures[f"after {marks.pop(0) // 1000}k MiB"] = worker.rss_mib()

    try:
        queue_tasks(ctx.env, ctx.cwd, "noop", n, [])
        ctx.tallies.wait(n, worker, 1800, read)  # -l info: a line per task, no rate
        figures[f"after {n // 1000}k MiB"] = worker.rss_mib()
        return figures
    finally:
        worker.stop()


def round_trip(ctx: Context, count: int = 1000) -> dict[str, float]:
    """Sequential ``await (await echo.delay(i)).get()`` from a client process, warm worker."""
    worker = Worker(ctx, "-c", "100")
    code = (
        "import asyncio, json, time, scen_app as a\n"
        "async def main():\n"
        "    out = []\n"
        "    async with a.app.setup():\n"
        f"        for i in range({count} + 20):\n"
        "            t = time.perf_counter()\n"
        "            assert await (await a.echo.delay(i)).get(timeout=30) == i\n"
        "            out.append(time.perf_counter() - t)\n"
        "    print(json.dumps(out[20:]))\n"
        "asyncio.run(main())\n"
    )
    try:
        return client_latencies(ctx, code)
    finally:
        worker.stop()


def stream(ctx: Context, events: int = 500, gap: float = 0.005) -> dict[str, float]:
    """A task yields ``events`` values ``gap`` apart (each on its own, not in a burst); a
    client process times each from just before its ``yield`` in the worker to its arrival in
    ``result.stream()``."""
    worker = Worker(ctx, "-c", "100")
    code = (
        "import asyncio, json, time, scen_app as a\n"
        "async def main():\n"
        "    out = []\n"
        "    async with a.app.setup():\n"
        "        for _ in range(3):\n"  # warm-up: connections, subscriptions, first task
        "            async for _e in (await a.ticks.delay(2, 0.0)).stream(timeout=30):\n"
        "                pass\n"
        f"        result = await a.ticks.delay({events}, {gap})\n"
        "        async for event in result.stream(timeout=120):\n"
        "            if event.state == 'PROGRESS':\n"
        "                out.append(time.time() - event.info['at'])\n"
        "    print(json.dumps(out[1:]))\n"  # the first may come as the latest state on attach
        "asyncio.run(main())\n"
    )
    try:
        return client_latencies(ctx, code)
    finally:
        worker.stop()


def client_latencies(ctx: Context, code: str) -> dict[str, float]:
    """Run ``code`` in a client process of its own; it prints a JSON list of seconds."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=ctx.env,
        cwd=ctx.cwd,
        text=True,
        check=True,
        capture_output=True,
    )
    seconds = sorted(json.loads(done.stdout))
    return {
        "p50 ms": 1000 * seconds[len(seconds) // 2],
        "p99 ms": 1000 * seconds[int(len(seconds) * 0.99)],
    }


@dataclass
class Context:
    env: dict[str, str]
    cwd: str
    tallies: Tallies


#: Scenario ids (``--only``) and what they run.
SCENARIOS: dict[str, Callable[[Context], dict[str, float]]] = {
    "drain-1p": lambda c: drain(c, 1),  # 20,000 queued no-op tasks, one process, -c 100
    "drain-2p": lambda c: drain(c, 2),  # the same through two processes (-P 2)
    "sleep10ms-c100": lambda c: sleeping(c, 0.010, 100, 20000),
    "sleep10ms-c1000": lambda c: sleeping(c, 0.010, 1000, 20000),
    "sleep1s-c1000": lambda c: sleeping(c, 1.0, 1000, 5000),  # ideal: 1,000/s
    "sync-light": light,  # plain def tasks in the thread pool
    "payload-100B": lambda c: drain(c, 1, 20000, 100),  # a no-op task with a string argument
    "payload-10kB": lambda c: drain(c, 1, 10000, 10_000),
    "payload-1MB": lambda c: drain(c, 1, 300, 1_000_000),
    "rss-100k": memory,  # idle, after 10k and after 100k no-op tasks
    "rtt": round_trip,  # delay().get() one at a time, warm worker
    "stream": stream,  # a yield in the worker to the event at a caller's result.stream()
}
#: Run only when ``--only`` names them (minutes each on RabbitMQ).
LONG_SCENARIOS: dict[str, Callable[[Context], dict[str, float]]] = {
    "rss-300k": lambda c: memory(c, 300_000),  # RSS at 10k, 100k, 200k and 300k tasks
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="sqlite,redis")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    every = SCENARIOS | LONG_SCENARIOS
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [name for name in names if name not in every]
    if unknown:
        parser.error(f"no scenario {', '.join(unknown)}: choose from {', '.join(every)}")
    brokers = args.brokers.split(",")
    compileall.compile_dir(Path(celeriac.__file__).parent, quiet=1)
    tallies = Tallies()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw: dict[str, dict[str, list[dict[str, float]]]] = {n: {b: [] for b in brokers} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "scen_app.py").write_text(APP)
        for rep in range(args.reps):
            for name in names:
                for broker_name in brokers:
                    with broker(broker_name, tmp) as where:
                        env = dict(
                            os.environ,
                            PYTHONPATH=tmp,
                            SCEN_BROKER=where.url,
                            SCEN_BACKEND=where.backend,
                            SCEN_CONF=json.dumps(where.conf),
                            SCEN_TALLY_PORT=str(tallies.port),
                        )
                        tallies.reset()
                        figures = every[name](Context(env, tmp, tallies))
                        if broker_name == "sqlite":
                            for path in Path(tmp).glob("scen.db*"):
                                path.unlink()
                    raw[name][broker_name].append(figures)
                    print(f"rep {rep + 1} {name} @ {broker_name}: {_short(figures)}", flush=True)
                    # Written after every figure: a failure later keeps what was measured.
                    (out / f"scenarios-{stamp}.json").write_text(json.dumps(raw, indent=1))
    table = _table(raw, brokers)
    (out / f"scenarios-{stamp}.md").write_text(table)
    print(table)


def _short(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.1f}" for k, v in figures.items())


def _table(raw: dict[str, dict[str, list[dict[str, float]]]], brokers: list[str]) -> str:
    lines = ["| scenario | figure | " + " | ".join(brokers) + " |"]
    lines.append("|---|---|" + "---|" * len(brokers))
    for name, by_broker in raw.items():
        measured = [rep for reps in by_broker.values() for rep in reps]
        if not measured:
            continue
        figures = measured[0].keys()
        for figure in figures:
            cells = []
            for broker_name in brokers:
                values = [rep[figure] for rep in by_broker[broker_name] if figure in rep]
                cells.append(_cell(values))
            lines.append(f"| {name} | {figure} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    middle = statistics.median(values)
    digits = 0 if middle >= 100 else 1
    if len(values) == 1:
        return f"{middle:,.{digits}f}"
    return f"{middle:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


if __name__ == "__main__":
    main()
