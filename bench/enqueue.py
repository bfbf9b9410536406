"""celeriac's own enqueue benchmark: one ``delay()`` per task against ``delay_many``.

Queues N no-op tasks from this process, on Redis (DB 14, a key prefix of its own), RabbitMQ
(a queue of its own on the default vhost) or an embedded SQLite file, and reports tasks/s
from the first call to the last publish confirmed, and this process's CPU per task. Nothing
consumes them; the keys and queues are deleted afterwards.

``single``: ``delay()`` with 100 in flight, as the shared harness's adapters enqueue.
``batched``: ``delay_many`` with ``--batch`` calls per call (the whole N by default).

    .venv/bin/python bench/enqueue.py --broker redis --mode batched --n 100000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from _local import (
    AMQP_URL,
    REDIS_URL,
    delete_amqp_queue,
    delete_prefixed,
    loop_factory,
    own_prefix,
    own_queue,
)

from celeriac import Celery

QUEUE = own_queue("enqueue")


async def enqueue(
    app: Celery, mode: str, n: int, batch: int, profile: bool
) -> tuple[float, float, str]:
    @app.task(name="enqueue.noop")
    async def noop(i: int) -> None:
        pass

    async with app.setup():
        await noop.delay(0)  # connected, queue declared: measure the steady state
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        cpu, started = time.process_time(), time.perf_counter()
        if mode == "single":
            for start in range(0, n, 100):
                await asyncio.gather(*(noop.delay(i) for i in range(start, min(n, start + 100))))
        else:
            for start in range(0, n, batch):
                await noop.delay_many((i,) for i in range(start, min(n, start + batch)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        text = ""
        if profiler:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            text = out.getvalue()
    return n / elapsed, cpu / n, text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--broker", choices=["sqlite", "redis", "amqp"], default="redis")
    parser.add_argument("--mode", choices=["single", "batched"], default="batched")
    parser.add_argument("--batch", type=int, default=0, help="calls per delay_many (0: all N)")
    parser.add_argument("--profile", default=None, help="write a cProfile summary here")
    args = parser.parse_args()
    prefix = own_prefix("enqueue")
    with tempfile.TemporaryDirectory() as tmp:
        url = {"sqlite": f"sqlite:///{tmp}/enqueue.db", "redis": REDIS_URL, "amqp": AMQP_URL}
        app = Celery("enqueue", broker=url[args.broker], backend="memory://")
        app.conf.task_default_queue = QUEUE
        if args.broker == "redis":
            app.conf.broker_transport_options = {"global_keyprefix": prefix}
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                rate, cpu, text = runner.run(
                    enqueue(app, args.mode, args.n, args.batch or args.n, bool(args.profile))
                )
        finally:
            if args.broker == "redis":
                delete_prefixed(prefix)
            elif args.broker == "amqp":
                asyncio.run(delete_amqp_queue(QUEUE))
    if args.profile:
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile).write_text(text)
    batch = f", {args.batch or args.n} per call" if args.mode == "batched" else ""
    print(
        f"enqueue on {args.broker}, {args.mode}{batch}: {args.n:,} tasks, {rate:,.0f} tasks/s,"
        f" {cpu * 1e6:.1f} us of CPU per task"
    )


if __name__ == "__main__":
    main()
