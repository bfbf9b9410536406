"""celeriac's own no-op drain benchmark (no harness counter), on SQLite or Redis.

Publishes N no-op tasks, then runs one worker in this process and reports tasks/s from the
first to the last completion, and the process's RSS after the drain. ``--profile`` writes a
cProfile summary of the drain; ``--py-spy`` a sampling profile of it (py-spy, which must be
installed, attached to this process: no tracing overhead), as shares of the samples by
function, own time and with callees. ``--broker redis`` uses Redis DB 14 under a key prefix
of its own, deleted afterwards; ``--broker amqp`` a queue of its own on the local RabbitMQ's
default vhost (deleted afterwards), with results in Redis DB 14 as above.

    .venv/bin/python bench/drain.py --n 20000 [--broker redis] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _local import (
    AMQP_URL,
    REDIS_URL,
    Completions,
    delete_amqp_queue,
    delete_prefixed,
    loop_factory,
    own_prefix,
    own_queue,
    resident_mib,
)

from celeriac import Celery
from celeriac.worker.process import prepare_worker_process
from celeriac.worker.worker import Worker


async def drain(
    n: int,
    concurrency: int,
    url: str,
    backend_url: str | None,
    options: dict[str, Any],
    backend_options: dict[str, Any],
    profile: str | None,
    counter: Any,
    profile_text: list[str],
    cpu_per_task: list[float],
    py_spy: str | None = None,
    events: bool = False,
) -> float:
    app = Celery("drain", broker=url, backend=backend_url)
    app.conf.worker_send_task_events = events
    app.conf.broker_transport_options = options
    app.conf.result_backend_transport_options = backend_options
    app.conf.task_default_queue = QUEUE
    completions = Completions(n)

    @app.task(name="drain.noop")
    async def noop() -> None:
        if counter is not None:
            await counter()
        completions.mark()

    async with app.setup():
        for _ in range(n):
            await noop.delay()
    worker = Worker(app, concurrency=concurrency)
    prepare_worker_process()  # as the worker command does
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    sampler = start_py_spy(py_spy) if py_spy else None
    cpu_before = time.process_time()
    running = asyncio.get_running_loop().create_task(worker.run())
    await asyncio.wait_for(completions.done.wait(), 300)
    cpu_per_task.append((time.process_time() - cpu_before) / n)
    if sampler is not None:
        sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        await asyncio.to_thread(sampler.wait)
    if profiler:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(45)
        profile_text.append(out.getvalue())
    worker.stop()
    await running
    return completions.rate()


def start_py_spy(raw: str) -> subprocess.Popen[bytes]:
    """py-spy sampling this process (200 Hz, idle time left out) into ``raw``."""
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "-p", str(os.getpid()), "-r", "200", "-f", "raw"]
    # It attaches within milliseconds; the drain it profiles takes seconds.
    return subprocess.Popen(
        [*command, "-o", raw, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_py_spy(raw: str, top: int = 30) -> str:
    """Shares of the samples by function: own (the innermost frame) and with callees."""
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    total = 0
    for line in Path(raw).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames:
            own[frames[-1]] += samples
            for frame in set(frames):
                within[frame] += samples
    lines = [
        f"{total} samples (py-spy, 200 Hz, idle left out). Time in the event loop's C code"
        " counts as Runner.run's own; a coroutine's samples start at the coroutine the loop"
        " resumed, so the frames that await it get none of them 'with callees'.",
        "",
        "own time:",
    ]
    lines += [f"{100 * k / total:5.1f}%  {name}" for name, k in own.most_common(top)]
    lines += ["", "with callees:"]
    lines += [f"{100 * k / total:5.1f}%  {name}" for name, k in within.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    """``name (path:line)`` as ``name (file)``, paths cut to the package."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--profile", default=None, help="write a cProfile summary here")
    parser.add_argument("--py-spy", default=None, help="write a py-spy summary here")
    parser.add_argument("--broker", choices=["sqlite", "redis", "amqp"], default="sqlite")
    parser.add_argument("--events", action="store_true", help="the worker sends task events (-E)")
    parser.add_argument(
        "--harness-counter",
        action="store_true",
        help="also call shared/bench's per-task Redis counter, as its harness does",
    )
    args = parser.parse_args()
    counter = None
    if args.harness_counter:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
        from bench import common

        counter = common.adone
    options: dict[str, Any] = {}
    backend_url: str | None = None
    prefixed = {"global_keyprefix": own_prefix("drain")}
    backend_options: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/drain.db"
        if args.broker == "redis":
            url = REDIS_URL
            options = backend_options = prefixed
        elif args.broker == "amqp":
            url, backend_url, backend_options = AMQP_URL, REDIS_URL, prefixed
        profile_text: list[str] = []
        cpu_per_task: list[float] = []
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                rate = runner.run(
                    drain(
                        args.n,
                        args.concurrency,
                        url,
                        backend_url,
                        options,
                        backend_options,
                        args.profile,
                        counter,
                        profile_text,
                        cpu_per_task,
                        f"{tmp}/py-spy.raw" if args.py_spy else None,
                        args.events,
                    )
                )
            if args.py_spy:
                Path(args.py_spy).write_text(summarize_py_spy(f"{tmp}/py-spy.raw"))
        finally:
            if backend_options:
                delete_prefixed(backend_options["global_keyprefix"])
            if args.broker == "amqp":
                asyncio.run(delete_amqp_queue(QUEUE))
    rss = resident_mib()
    if args.profile:
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile).write_text("".join(profile_text))
    print(
        f"drain on {args.broker}: {args.n} no-op tasks, concurrency {args.concurrency},"
        f" task events {'on' if args.events else 'off'}:"
        f" {rate:,.0f} tasks/s, {cpu_per_task[0] * 1e6:.0f} us of CPU per task (this process,"
        f" all threads); RSS after {rss:.0f} MiB"
    )


QUEUE = own_queue("drain")


if __name__ == "__main__":
    main()
