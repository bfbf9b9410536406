"""Process pools: 10 ms async tasks through 1 worker process and through N, and the memory of
an idle worker process, on SQLite or Redis.

Queues ``--n`` tasks that each sleep 10 ms (asyncio) and count themselves in Redis DB 14,
then starts ``celeriac worker -P <p> -c <c>`` and reports tasks/s from the first completion
to the last. Before the tasks are queued, each child's resident memory is read once it is
ready (idle).

    .venv/bin/python bench/processes.py [--n 20000] [--processes 1,4] [--broker sqlite|redis]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

APP = """
import asyncio, json, os, time
from celeriac import Celery

app = Celery("procbench", broker=os.environ["BENCH_BROKER_URL"])
options = json.loads(os.environ.get("BENCH_OPTIONS", "{}"))
app.conf.broker_transport_options = options
app.conf.result_backend_transport_options = options
KEY = os.environ["BENCH_KEY"]
_counter = None


@app.task(name="procbench.sleep", ignore_result=True)
async def sleep10() -> None:
    global _counter
    await asyncio.sleep(0.010)
    if _counter is None:  # imported at the first task: the idle figure is celeriac's own
        import redis.asyncio as aioredis

        _counter = aioredis.Redis(db=14)
    pipe = _counter.pipeline(transaction=False)
    pipe.incr(KEY + ":done")
    pipe.set(KEY + ":first", repr(time.time()), nx=True)
    pipe.set(KEY + ":last", repr(time.time()))
    await pipe.execute()
"""
READY = re.compile(r"ready: pid (\d+)")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_rss(env: dict[str, str], cwd: str, processes: int) -> list[float]:
    """Each worker process's resident memory once it says it is ready (no task run)."""
    cli = [sys.executable, "-m", "celeriac.cli", "-A", "procbench_app:app", "worker"]
    worker = subprocess.Popen(
        [*cli, "-P", str(processes), "-l", "info"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert worker.stdout is not None
        pids: list[int] = []
        while len(pids) < processes:
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError("the worker exited before it was ready")
            if match := READY.search(line):
                pids.append(int(match[1]))
        return [rss_mib(pid) for pid in pids]
    finally:
        worker.terminate()
        worker.wait(60)
        worker.stdout.close() if worker.stdout else None


def rate(env: dict[str, str], cwd: str, n: int, processes: int, concurrency: int) -> float:
    """Tasks/s from the first completion to the last (-l warning: no line per task)."""
    counter = redis.Redis(db=14)
    key = env["BENCH_KEY"]
    cli = [sys.executable, "-m", "celeriac.cli", "-A", "procbench_app:app", "worker"]
    worker = subprocess.Popen(
        [*cli, "-P", str(processes), "-c", str(concurrency), "-l", "warning"],
        env=env,
        cwd=cwd,
    )
    try:
        # Queued from a process of its own, as a web app would.
        send = f"import procbench_app as a\nfor _ in range({n}): a.sleep10.delay()\n"
        subprocess.run([sys.executable, "-c", send], env=env, cwd=cwd, check=True)
        deadline = time.monotonic() + 600
        while int(counter.get(key + ":done") or 0) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the tasks did not finish in 10 minutes")
            time.sleep(0.05)
        first = float(counter.get(key + ":first") or 0)
        last = float(counter.get(key + ":last") or 0)
        return (n - 1) / (last - first)
    finally:
        worker.terminate()
        worker.wait(60)
        for name in list(counter.scan_iter(key + "*")):
            counter.delete(name)


def run(broker: str, n: int, processes: int, concurrency: int) -> tuple[float, list[float]]:
    key = f"celeriac-procbench-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "procbench_app.py").write_text(APP)
        env = dict(os.environ, PYTHONPATH=tmp, BENCH_KEY=key)
        if broker == "redis":
            env["BENCH_BROKER_URL"] = "redis://127.0.0.1:6379/14"
            env["BENCH_OPTIONS"] = json.dumps({"global_keyprefix": key + ":"})
        else:
            env["BENCH_BROKER_URL"] = f"sqlite:///{tmp}/bench.db"
        idle = idle_rss(env, tmp, processes)
        return rate(env, tmp, n, processes, concurrency), idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--processes", default="1,4")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--broker", choices=["sqlite", "redis"], default="sqlite")
    args = parser.parse_args()
    for processes in [int(p) for p in args.processes.split(",")]:
        rate, idle = run(args.broker, args.n, processes, args.concurrency)
        print(
            f"{args.broker}: {processes} process(es) x -c {args.concurrency}: {args.n} x 10 ms"
            f" tasks at {rate:,.0f}/s; idle RSS per process {', '.join(f'{m:.1f}' for m in idle)}"
            " MiB"
        )


if __name__ == "__main__":
    main()
