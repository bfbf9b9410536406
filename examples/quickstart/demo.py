"""The README's demo: start a worker on the embedded broker, send tasks from sync and async code.

Run it with ``scripts/demo``. It uses a throw-away database file, starts
``celeriac -A tasks:app worker`` as a child process, and stops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent


def start_worker(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start the worker; its log lines are collected by a thread so its pipe never fills."""
    argv = [sys.executable, "-m", "celeriac.cli", "-A", "tasks:app", "worker", "-c", "100"]
    print("$ celeriac -A tasks:app worker -c 100")
    worker = subprocess.Popen(argv, cwd=HERE, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert worker.stderr is not None
        for line in worker.stderr:
            lines.append(line.rstrip())
            if " ready: " in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or worker.poll() is not None:
        raise SystemExit("the worker did not start:\n" + "\n".join(lines))
    print("  worker |", lines[-1])
    return worker, lines


def sync_part() -> None:
    from tasks import add, flaky, word_count

    print("\n# sync code (a script, Flask, Django): calls block")
    started = time.perf_counter()
    r = add.delay(2, 3)
    print(
        f">>> add.delay(2, 3).get(timeout=10)  ->  {r.get(timeout=10)}"
        f"   ({(time.perf_counter() - started) * 1000:.0f} ms)"
    )
    r = word_count.delay("the quick brown fox")
    print(f">>> word_count.delay(...).get()      ->  {r.get(timeout=10)}   state={r.state}")
    r = flaky.delay(2)
    print(f">>> flaky.delay(2).get()              ->  {r.get(timeout=10)!r}")


async def async_part() -> None:
    from tasks import add, app

    print("\n# async code (FastAPI, asyncio scripts): the same names, awaited")
    async with app.setup():
        started = time.perf_counter()
        results = [await add.delay(i, i) for i in range(100)]
        values = await asyncio.gather(*(r.get(timeout=30) for r in results))
        elapsed = time.perf_counter() - started
        print(
            f">>> 100 x await add.delay(i, i) then gather(get)  ->  sum {sum(values)}"
            f" in {elapsed:.2f} s (each task sleeps 0.1 s: they ran concurrently)"
        )


def main() -> None:
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/demo.db"
        os.environ["CELERIAC_BROKER_URL"] = url
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        worker, lines = start_worker(env)
        try:
            sync_part()
            asyncio.run(async_part())
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        print("\n# the worker logged one line per task received and succeeded/failed/retried:")
        for line in [*lines[1:4], "  ...", *lines[-2:]]:
            print("  worker |", line)
    print("\ndemo finished: worker exit code", worker.returncode)


if __name__ == "__main__":
    main()
