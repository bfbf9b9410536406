"""Canvas end to end, side by side: a real Celery 5 worker against one celeriac worker process.

Starts ``celery -A canvas_apps.celery_app worker -P threads -c 100`` and
``celeriac -A canvas_apps.celeriac_app:app worker -c 100`` on the same Redis (broker and
results in one DB, each side under a key prefix and a queue of its own, deleted afterwards),
waits until each has answered a probe task, then times each scenario from the
``apply_async()`` call to the final result, taking turns (celeriac, Celery, celeriac,
Celery...):

- ``chain``: ``--chain`` steps of ``inc`` (each returns its input + 1), waiting for the last;
- ``group``: ``--n`` ``inc`` tasks, waiting for every result (``GroupResult.get()``);
- ``chord``: ``--n`` ``inc`` header tasks and a summing body, waiting for the body's result.

Each side is driven by its own client in this process: Celery's (sync) sends to the Celery
worker, celeriac's (async, on uvloop when installed) to the celeriac worker. Building the
signatures is left out of the time; both workers stay up for the whole run. Each run also
reports the CPU seconds the worker process and this client process used during it, and
Redis's own (``INFO cpu``: the whole server, so other clients of it count too).

``--profile FILE`` runs the celeriac worker under cProfile and writes its summary there
(the whole run: pick one scenario); ``--py-spy FILE`` samples it with py-spy instead (no
tracing overhead; ``--py-spy-bin`` when py-spy is not beside this Python), its raw stacks
beside FILE with the suffix ``.raw``. ``--only``
runs one side.

    .venv/bin/python bench/canvas.py [--reps 3] [--scenarios chain,group,chord] [--n 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _local import loop_factory  # noqa: E402
from canvas_apps import (  # noqa: E402
    CELERIAC_PREFIX_VARIABLE,
    CELERY_PREFIX_VARIABLE,
    URL_VARIABLE,
)

SIDES = ("celeriac", "celery")
SCENARIOS = ("chain", "group", "chord")
WAIT = 600.0  # seconds any one run may take before it counts as hung


@dataclass
class Run:
    """One timed run: wall seconds, and the CPU seconds spent meanwhile."""

    seconds: float
    worker_cpu: float
    client_cpu: float
    redis_cpu: float


@dataclass
class Figures:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def add(self, scenario: str, side: str, run: Run) -> None:
        self.runs.setdefault((scenario, side), []).append(run)

    def median(self, scenario: str, side: str) -> float:
        return statistics.median(r.seconds for r in self.runs[(scenario, side)])


# -- the workers -------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Worker:
    """A worker command in the background, its output in a log file."""

    def __init__(self, side: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.side = side
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            command, env=env, cwd=BENCH, stdout=self.output, stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid

    def cpu(self) -> float:
        return process_cpu(self.pid)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text()[-3000:]
            code = self.process.returncode
            raise RuntimeError(f"the {self.side} worker exited ({code}):\n{tail}")

    def stop(self) -> None:
        """A graceful stop (SIGTERM), which lets a profiler around it write its file."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


def worker_commands(args: argparse.Namespace, raw_profile: str | None) -> dict[str, list[str]]:
    python = sys.executable
    celeriac = [python, "-m", "celeriac.cli", "-A", "canvas_apps.celeriac_app:app", "worker"]
    if raw_profile:
        celeriac[1:3] = ["-m", "cProfile", "-o", raw_profile, "-m", "celeriac.cli"]
    celery = [python, "-m", "celery", "-A", "canvas_apps.celery_app", "worker"]
    return {
        "celeriac": [*celeriac, "-c", str(args.concurrency), "-l", "warning"],
        # Celery's start-up and liveness broadcasts off, as a tuned deployment runs it.
        "celery": [
            *celery,
            *("-P", "threads", "-c", str(args.concurrency), "-l", "warning"),
            *("--without-mingle", "--without-gossip", "--without-heartbeat"),
        ],
    }


# -- the two clients ---------------------------------------------------------------------------


class CeleryClient:
    """Celery's own client, sync, as a Celery user calls it."""

    def __init__(self) -> None:
        from canvas_apps import celery_app

        self.module = celery_app

    def probe(self) -> None:
        assert self.module.inc.delay(0).get(timeout=WAIT) == 1

    def timed(self, scenario: str, chain_length: int, n: int) -> float:
        from celery import chain, chord, group
        from celery.result import AsyncResult

        inc, tsum = self.module.inc, self.module.tsum
        if scenario == "chain":
            sig: Any = chain(inc.s(0), *(inc.s() for _ in range(chain_length - 1)))
            expected: Any = chain_length
        elif scenario == "group":
            sig = group(inc.s(i) for i in range(n))
            expected = list(range(1, n + 1))
        else:
            sig = chord((inc.s(i) for i in range(n)), tsum.s())
            expected = n * (n + 1) // 2
        start = time.perf_counter()
        result = sig.apply_async()
        if scenario == "chord":
            # The body's result alone: the chord's own ``get()`` re-reads the state of
            # every header result at each wake-up (``maybe_throw`` on its parent), which
            # kept this client at 100% CPU for over ten minutes at 10,000 header tasks.
            result = AsyncResult(result.id, app=self.module.app)
        value = result.get(timeout=WAIT)
        elapsed = time.perf_counter() - start
        assert value == expected, f"Celery's {scenario} gave {str(value)[:200]}"
        return elapsed

    def close(self) -> None:
        self.module.app.close()


class CeleriacClient:
    """celeriac's client, async, on one event loop kept for the whole run."""

    def __init__(self) -> None:
        from canvas_apps import celeriac_app

        self.module = celeriac_app
        self.runner = asyncio.Runner(loop_factory=loop_factory())

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.runner.run(coroutine)

    def probe(self) -> None:
        async def probe() -> int:
            result = await self.module.inc.delay(0)
            return int(await result.get(timeout=WAIT))

        assert self.run(probe()) == 1

    def timed(self, scenario: str, chain_length: int, n: int) -> float:
        from celeriac import chain, chord, group

        inc, tsum = self.module.inc, self.module.tsum
        if scenario == "chain":
            sig: Any = chain(inc.s(0), *(inc.s() for _ in range(chain_length - 1)))
            expected: Any = chain_length
        elif scenario == "group":
            sig = group(inc.s(i) for i in range(n))
            expected = list(range(1, n + 1))
        else:
            sig = chord([inc.s(i) for i in range(n)], tsum.s())
            expected = n * (n + 1) // 2

        async def timed() -> tuple[float, Any]:
            start = time.perf_counter()
            result = await sig.apply_async()
            value = await result.get(timeout=WAIT)
            return time.perf_counter() - start, value

        elapsed, value = self.run(timed())
        assert value == expected, f"celeriac's {scenario} gave {str(value)[:200]}"
        return float(elapsed)

    def close(self) -> None:
        async def close() -> None:
            await self.module.app.close()

        self.run(close())
        self.runner.close()


# -- the run -----------------------------------------------------------------------------------


def measure(timed: Callable[[], float], worker: Worker, store: redis.Redis) -> tuple[Run, float]:
    worker_before, client_before, redis_before = worker.cpu(), time.process_time(), redis_cpu(store)
    seconds = timed()
    run = Run(
        seconds,
        worker.cpu() - worker_before,
        time.process_time() - client_before,
        redis_cpu(store) - redis_before,
    )
    return run, seconds


def delete_prefixed(store: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in store.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            deleted += store.delete(*batch)
            batch.clear()
    if batch:
        deleted += store.delete(*batch)
    return deleted


def report(figures: Figures, scenarios: list[str], sides: list[str], sizes: dict[str, int]) -> None:
    print()
    print(
        "| scenario | side | runs (s) | median (s) | tasks/s | worker CPU s | client CPU s |"
        " Redis CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        for side in sides:
            runs = figures.runs[(scenario, side)]
            median = figures.median(scenario, side)
            cpu = {
                k: statistics.median(getattr(r, k) for r in runs)
                for k in ("worker_cpu", "client_cpu", "redis_cpu")
            }
            print(
                f"| {scenario} | {side} | {', '.join(f'{r.seconds:.3f}' for r in runs)} |"
                f" {median:.3f} | {sizes[scenario] / median:,.0f} | {cpu['worker_cpu']:.2f} |"
                f" {cpu['client_cpu']:.2f} | {cpu['redis_cpu']:.2f} |"
            )
    if len(sides) == 2:
        print()
        print("| scenario | celeriac/Celery (time) | celeriac speed-up (Celery s / celeriac s) |")
        print("|---|---|---|")
        for scenario in scenarios:
            ratio = figures.median(scenario, "celeriac") / figures.median(scenario, "celery")
            print(f"| {scenario} | {ratio:.3f} | {1 / ratio:.2f}x |")


def write_profile(raw: str, out: Path) -> None:
    text = []
    for key in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(raw, stream=buffer).sort_stats(key).print_stats(45)
        text.append(buffer.getvalue())
    out.write_text("\n".join(text))


def start_py_spy(binary: str, pid: int, raw: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker (200 Hz, idle left out) into ``raw`` until SIGINT."""
    return subprocess.Popen(
        [binary, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", raw, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_py_spy(sampler: subprocess.Popen[bytes]) -> None:
    sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
    sampler.wait(60)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--n", type=int, default=10000, help="group and chord size")
    parser.add_argument("--chain", type=int, default=100, help="chain length")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--db", type=int, default=13, choices=range(10, 16))
    parser.add_argument("--only", choices=SIDES, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the celeriac worker")
    parser.add_argument("--py-spy", type=Path, default=None, help="py-spy the celeriac worker")
    parser.add_argument("--py-spy-bin", default=str(Path(sys.executable).with_name("py-spy")))
    args = parser.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: pick from {', '.join(SCENARIOS)}")
    args.sides = [args.only] if args.only else list(SIDES)
    return args


def environment(url: str, prefixes: dict[str, str]) -> dict[str, str]:
    """This process's environment with the apps' settings, ``bench/`` on the import path."""
    env = dict(os.environ)
    env[URL_VARIABLE] = url
    env[CELERY_PREFIX_VARIABLE] = prefixes["celery"]
    env[CELERIAC_PREFIX_VARIABLE] = prefixes["celeriac"]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
    return env


def run_scenarios(
    args: argparse.Namespace,
    workers: dict[str, Worker],
    clients: dict[str, Any],
    store: redis.Redis,
) -> Figures:
    """Each scenario ``--reps`` times, the sides taking turns."""
    figures = Figures()
    for scenario in args.scenarios:
        for rep in range(args.reps):
            for side in args.sides:
                client = clients[side]

                def timed(client: Any = client, scenario: str = scenario) -> float:
                    return float(client.timed(scenario, args.chain, args.n))

                run, seconds = measure(timed, workers[side], store)
                workers[side].check_alive()
                figures.add(scenario, side, run)
                print(
                    f"{scenario} rep {rep + 1} {side}: {seconds:.3f} s (worker CPU"
                    f" {run.worker_cpu:.2f} s, client CPU {run.client_cpu:.2f} s,"
                    f" Redis CPU {run.redis_cpu:.2f} s)",
                    flush=True,
                )
    return figures


def clean_up(steps: list[Callable[[], object]]) -> None:
    """Run each step, whatever the ones before it raised (reported, not raised)."""
    for step in steps:
        try:
            step()
        except Exception as error:
            print(f"cleaning up: {error!r}", file=sys.stderr)


def write_py_spy(raw: Path, out: Path) -> None:
    """drain.py's summary of the samples, the raw stacks beside it (``.raw``)."""
    from drain import summarize_py_spy

    # A frame name may hold a line break; drain's summary reads whole lines only.
    lines = raw.read_text().splitlines()
    kept = [line for line in lines if line.rpartition(" ")[2].isdigit()]
    out.with_suffix(".raw").write_text("\n".join(kept) + "\n")
    print(f"py-spy: {len(lines) - len(kept)} of {len(lines)} raw lines left out")
    out.write_text(summarize_py_spy(str(out.with_suffix(".raw")), top=40))


def main() -> None:
    args = parse_arguments()
    url = f"redis://127.0.0.1:6379/{args.db}"
    run_id = uuid.uuid4().hex[:12]
    prefixes = {side: f"canvasbench-{side}-{run_id}:" for side in SIDES}
    env = environment(url, prefixes)
    os.environ.update(env)  # the client apps read the same settings
    store = redis.Redis.from_url(url)
    workers: dict[str, Worker] = {}
    clients: dict[str, Any] = {}
    sampler: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        raw_profile = f"{tmp}/celeriac.prof" if args.profile else None
        try:
            commands = worker_commands(args, raw_profile)
            for side in args.sides:
                workers[side] = Worker(side, commands[side], env, Path(tmp) / f"{side}.log")
                clients[side] = CeleriacClient() if side == "celeriac" else CeleryClient()
            for side in args.sides:  # ready once it has run a task and stored its result
                started = time.perf_counter()
                clients[side].probe()
                workers[side].check_alive()
                ready_in = time.perf_counter() - started
                print(f"{side} worker (pid {workers[side].pid}) ready in {ready_in:.1f} s")
            if args.py_spy:
                sampler = start_py_spy(args.py_spy_bin, workers["celeriac"].pid, f"{tmp}/spy.raw")
            figures = run_scenarios(args, workers, clients, store)
        finally:
            steps: list[Callable[[], object]] = []
            if sampler is not None:
                steps.append(lambda: stop_py_spy(sampler))
            steps += [client.close for client in clients.values()]
            steps += [worker.stop for worker in workers.values()]
            steps += [partial(delete_prefixed, store, prefixes[side]) for side in SIDES]
            steps.append(store.close)
            clean_up(steps)
        if raw_profile and args.profile and Path(raw_profile).exists():
            write_profile(raw_profile, args.profile)
        if args.py_spy and Path(f"{tmp}/spy.raw").exists():
            write_py_spy(Path(f"{tmp}/spy.raw"), args.py_spy)
    sizes = {"chain": args.chain, "group": args.n, "chord": args.n + 1}
    report(figures, args.scenarios, args.sides, sizes)


if __name__ == "__main__":
    main()
