"""Periodic tasks under leader kills: how long the fleet is without a leader, and whether any
run is sent twice or skipped.

Starts ``--schedulers`` ``celeriac beat`` processes on one broker and result store (an
every-second entry sending to a queue nobody consumes), SIGKILLs the leader ``--kills``
times (each after it sent ``--runs-per-leader`` runs), and prints each failover (from the
kill to the next "leads" line), then the runs queued by the run time each was sent for:
how many, how many twice, how many missing between the first and the last.

    .venv/bin/python bench/beat_failover.py --broker redis --failover 10
    .venv/bin/python bench/beat_failover.py --broker sqlite --failover 10

Redis: DB 5 under a fresh key prefix, deleted afterwards. SQLite: a file in a temp directory.
amqp: RabbitMQ alone (results over rpc://), in a virtual host of its own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

APP = """
import json, os
from celeriac import Celery
app = Celery("beat_bench")
app.conf.update(json.loads(os.environ["BEAT_BENCH_CONF"]))
app.conf.beat_schedule = {{"every-second": {{"task": "bench.noted", "schedule": 1.0,
                          "options": {{"queue": "{queue}"}}}}}}
"""
QUEUE = "beat-bench-runs"
LEADS = " leads: it sends the periodic tasks"


class Scheduler:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "celeriac.cli", "-A", "beat_bench_app:app", "beat"]
        self.proc = subprocess.Popen(
            [*argv, "-l", "info"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def leads(self) -> float | None:
        """When it last said it leads, if its newest word on the lead is that."""
        said = [(t, line) for t, line in list(self.lines) if LEADS in line or "no longer" in line]
        return said[-1][0] if said and LEADS in said[-1][1] else None

    def sent(self) -> int:
        return sum(1 for _, line in list(self.lines) if "beat: sending" in line)


def sends(scheduler: Scheduler, count: int) -> None:
    """Until ``scheduler`` logged ``count`` more sends than now."""
    start = scheduler.sent()
    wait(lambda: scheduler.sent() >= start + count)


def wait(condition, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)  # a benchmark's poll, not a test's synchronisation
    raise SystemExit("timed out")


async def queued_runs(conf: dict[str, object]) -> list[datetime]:
    from celeriac import Celery

    app = Celery("reader")
    app.conf.update(conf)
    found: list[datetime] = []
    async with app.setup():
        broker = (await app.connection()).broker
        size = (await broker.queue_sizes([QUEUE])).get(QUEUE, 0)
        if size:
            consuming = broker.consume([QUEUE], prefetch=size)
            async for delivery in consuming:
                found.append(datetime.fromisoformat(delivery.envelope.headers["celeriac_beat_run"]))
                await broker.ack(delivery)
                if len(found) == size:
                    break
            await consuming.aclose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("redis", "sqlite", "amqp"), default="redis")
    parser.add_argument("--schedulers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--runs-per-leader", type=int, default=3)
    parser.add_argument("--failover", type=float, default=10.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="beat-bench-"))
    (workdir / "beat_bench_app.py").write_text(APP.format(queue=QUEUE))
    prefix = f"beat-bench-{uuid.uuid4().hex[:8]}:"
    if args.broker == "redis":
        url = "redis://127.0.0.1:6379/5"
        conf: dict[str, object] = {
            "broker_url": url,
            "result_backend": url,
            "broker_transport_options": {"global_keyprefix": prefix},
            "result_backend_transport_options": {"global_keyprefix": prefix},
        }
    elif args.broker == "amqp":  # RabbitMQ alone: results over rpc://, a vhost of its own
        vhost = prefix.rstrip(":")
        for argv in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest"] + [".*"] * 3):
            subprocess.run(["rabbitmqctl", *argv], check=True, capture_output=True, timeout=60)
        conf = {
            "broker_url": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
            "result_backend": "rpc://",
        }
    else:
        url = f"sqlite:///{workdir / 'beat.db'}"
        conf = {"broker_url": url, "result_backend": url}
    conf["beat_failover_timeout"] = args.failover
    env = {**os.environ, "BEAT_BENCH_CONF": json.dumps(conf), "PYTHONPATH": str(workdir)}
    env = {
        k: v for k, v in env.items() if k not in ("CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND")
    }
    alive = [Scheduler(workdir, env) for _ in range(args.schedulers)]
    failovers = []
    try:
        leader = wait(lambda: next((s for s in alive if s.leads()), None))
        for _ in range(args.kills):
            sends(leader, args.runs_per_leader)
            leader.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            alive.remove(leader)
            leader = wait(lambda: next((s for s in alive if s.leads()), None))
            failovers.append(leader.leads() - killed)  # type: ignore[operator]
            alive.append(Scheduler(workdir, env))  # keep the fleet's size
        sends(leader, args.runs_per_leader)
    finally:
        for s in alive:
            s.proc.send_signal(signal.SIGTERM)
        for s in alive:
            s.proc.wait(30)
    runs = Counter(asyncio.run(queued_runs(conf)))
    times = sorted(runs)
    missing = sum(int((b - a) / timedelta(seconds=1)) - 1 for a, b in itertools.pairwise(times))
    print(
        f"broker {args.broker}, {args.schedulers} schedulers,"
        f" beat_failover_timeout {args.failover:g} s"
    )
    print(
        "failovers (s): "
        + ", ".join(f"{f:.2f}" for f in failovers)
        + f"  (median {statistics.median(failovers):.2f}, max {max(failovers):.2f})"
    )
    print(
        f"runs queued: {len(times)} distinct, {sum(n - 1 for n in runs.values())} duplicates,"
        f" {missing} missing between the first and the last"
    )
    if args.broker == "amqp":
        subprocess.run(["rabbitmqctl", "delete_vhost", prefix.rstrip(":")], capture_output=True)
    if args.broker == "redis":
        import redis

        client = redis.Redis(db=5)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


if __name__ == "__main__":
    main()
