"""Stream latency: from a ``yield`` in a worker process to the event at a caller's
``result.stream()``, on the embedded SQLite broker, on Redis, and on RabbitMQ with rpc://.

A worker process (``celeriac worker``) runs a task that yields ``--events`` values, each
carrying the wall-clock time just before its ``yield``, ``--gap-ms`` apart (so each event is
measured on its own, not as part of a burst); this process streams them and records
``arrival - yield time`` for each. Reports p50/p99 per broker.

    .venv/bin/python bench/stream_latency.py [--events 500] [--gap-ms 5] [--broker rpc]

Redis uses DBs 14/15 under a key prefix of its own, deleted afterwards; RabbitMQ a queue of
its own in the default vhost, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

APP = """
import asyncio, json, os, time
from celeriac import Celery

app = Celery("streambench", broker=os.environ["BENCH_BROKER_URL"])
options = json.loads(os.environ.get("BENCH_OPTIONS", "{}"))
app.conf.broker_transport_options = options
app.conf.result_backend_transport_options = options
if os.environ.get("BENCH_RESULTS"):
    app.conf.result_backend = os.environ["BENCH_RESULTS"]
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "celery")


@app.task(name="streambench.ticks")
async def ticks(n: int, gap: float):
    for i in range(n):
        yield {"i": i, "at": time.time()}
        await asyncio.sleep(gap)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(events: int, gap: float) -> list[float]:
    import streambench_app as bench_app

    latencies: list[float] = []
    async with bench_app.app.setup():
        for _ in range(3):  # warm-up: connections, subscriptions, the worker's first task
            result = await bench_app.ticks.delay(2, 0.0)
            async for _event in result.stream(timeout=30):
                pass
        result = await bench_app.ticks.delay(events, gap)
        async for event in result.stream(timeout=120):
            arrived = time.time()
            if event.state == "PROGRESS":
                latencies.append(arrived - event.info["at"])
    return latencies[1:]  # the first may be read as the "latest state" on attach


def run(broker: str, events: int, gap: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "streambench_app.py").write_text(APP)
        prefix = f"celeriac-streambench-{uuid.uuid4().hex}:"
        # Read by the app module in both processes (this one streams, the child works).
        queue = f"streambench-{uuid.uuid4().hex}"
        os.environ["BENCH_QUEUE"] = queue
        os.environ["BENCH_RESULTS"] = ""
        if broker == "redis":
            os.environ["BENCH_BROKER_URL"] = "redis://127.0.0.1:6379/14"
            os.environ["BENCH_OPTIONS"] = json.dumps({"global_keyprefix": prefix})
        elif broker == "rpc":
            os.environ["BENCH_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672//"
            os.environ["BENCH_RESULTS"] = "rpc://"
            os.environ["BENCH_OPTIONS"] = "{}"
        else:
            os.environ["BENCH_BROKER_URL"] = f"sqlite:///{tmp}/bench.db"
            os.environ["BENCH_OPTIONS"] = "{}"
        env = dict(os.environ, PYTHONPATH=tmp)
        sys.path.insert(0, tmp)
        argv = [sys.executable, "-m", "celeriac.cli", "-A", "streambench_app:app", "worker"]
        worker = subprocess.Popen([*argv, "-l", "warning"], env=env, cwd=tmp)
        try:
            return asyncio.run(measure(events, gap))
        finally:
            worker.terminate()
            worker.wait(30)
            sys.path.remove(tmp)
            sys.modules.pop("streambench_app", None)
            if broker == "rpc":
                asyncio.run(_delete_queue(queue))
            if broker == "redis":
                import redis

                for db in (14, 15):
                    client = redis.Redis(db=db)
                    keys = list(client.scan_iter(f"{prefix}*"))
                    if keys:
                        client.delete(*keys)


async def _delete_queue(queue: str) -> None:
    import aiormq

    connection = await aiormq.connect("amqp://guest:guest@127.0.0.1:5672//")
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(queue)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--broker", choices=["sqlite", "redis", "rpc", "all"], default="all")
    args = parser.parse_args()
    brokers = ["sqlite", "redis", "rpc"] if args.broker == "all" else [args.broker]
    for broker in brokers:
        latencies = run(broker, args.events, args.gap_ms / 1000)
        ms = [value * 1000 for value in latencies]
        print(
            f"stream latency on {broker}: {len(ms)} events, p50 {statistics.median(ms):.2f} ms,"
            f" p99 {percentile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms"
        )


if __name__ == "__main__":
    main()
