"""The shared harness's completion counter alone: how fast a worker could possibly drain in
that harness on this machine, whatever its own overhead.

Every harness task ends with ``await bench.common.adone()`` (a redis-py pipeline of three
commands on the harness's counter DB). This runs that call ``--n`` times, ``--concurrency``
at a time, on uvloop in one process, as a worker with no cost of its own would; and then
one at a time, as the round-trip figure's task does. It also prints this process's RSS
after ``--n`` calls made ``--concurrency`` at a time: Python, uvloop, the harness's imports
and its counter's connections, with no task queue, which is the floor under any worker's
"RSS after drain" in that harness. Run it with the peers' venv:

    ~/.cache/celeriac-bench-peers/bin/python bench/counter_ceiling.py

It adds to the harness's own counter keys, which every harness trial resets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from _local import resident_mib
from bench import common as C  # the harness, beside the checkout


async def ceiling(n: int, concurrency: int) -> tuple[float, float, float]:
    # First as a worker would hold them: ``concurrency`` calls in flight and no more objects
    # than that, for the RSS floor (the rate run below makes all n coroutines at once).
    async def calls(count: int) -> None:
        for _ in range(count):
            await C.adone()

    await asyncio.gather(*(calls(n // concurrency) for _ in range(concurrency)))
    rss = resident_mib()
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await C.adone()

    await C.adone()
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    rate = n / (time.perf_counter() - started)
    latencies = []
    for _ in range(2000):
        started = time.perf_counter()
        await C.adone()
        latencies.append(time.perf_counter() - started)
    return rate, statistics.median(latencies), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    rate, p50, rss = uvloop.run(ceiling(args.n, args.concurrency))
    print(
        f"harness counter alone: {rate:,.0f} calls/s at concurrency {args.concurrency};"
        f" one at a time, p50 {p50 * 1e6:.0f} us per call; RSS after {args.n:,} calls"
        f" {args.concurrency} at a time: {rss:.1f} MiB"
    )


if __name__ == "__main__":
    main()
