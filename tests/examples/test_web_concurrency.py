"""One web process serves 1,000 requests that each await a task's result or stream it, and
keeps answering its health check quickly meanwhile (uvicorn, a real worker, httpx)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import CELERIAC

pytestmark = pytest.mark.integration

#: Generous: what matters is that waiting requests never block the loop (a blocked loop
#: would hold the health check for the whole second the tasks take, or longer).
HEALTH_P95 = 0.25
HEALTH_MAX = 1.0

LOAD = """
import asyncio, json, sys
import httpx

async def main(base):
    limits = httpx.Limits(max_connections=1100, max_keepalive_connections=1100)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        waits = [http.get("/wait", params={"s": 1.0}) for _ in range(900)]
        streams = [http.get("/stream") for _ in range(100)]
        answers = await asyncio.gather(*waits, *streams)
    streamed = []
    for answer in answers[900:]:
        blocks = [b for b in answer.text.strip().split("\\n\\n") if b]
        events = [dict(l.split(": ", 1) for l in b.splitlines()) for b in blocks]
        info = [json.loads(e["data"])["info"] for e in events if e["event"] == "PROGRESS"]
        streamed.append([info, events[-1]["event"]])
    print(json.dumps({"waited": [a.json() for a in answers[:900]], "streamed": streamed}))

asyncio.run(main(sys.argv[1]))
"""


def test_a_thousand_waiting_requests_do_not_block_the_web_process(
    servers: Any, port: int, tmp_path: Path
) -> None:
    run = servers(
        [
            *CELERIAC,
            *("run", "tests.examples.concurrency_app:app", "--port", str(port)),
            *("-c", "1000", "-l", "warning"),
        ],
        CELERIAC_BROKER_URL=f"sqlite:///{tmp_path / 'broker.db'}",
    )
    base = f"http://127.0.0.1:{port}"
    run.wait_http(base + "/health")

    # The thousand requests come from a process of their own, so the health probes below
    # time the server, not a client loop busy with a thousand connections.
    load = subprocess.Popen([sys.executable, "-c", LOAD, base], stdout=subprocess.PIPE, text=True)
    health: list[float] = []
    with httpx.Client(base_url=base, timeout=10) as probe:
        while load.poll() is None or not health:
            started = time.perf_counter()
            assert probe.get("/health").status_code == 200
            health.append(time.perf_counter() - started)
    out, _ = load.communicate(timeout=120)
    summary = json.loads(out)
    assert summary["waited"] == [1.0] * 900
    for progress, last in summary["streamed"]:
        # However late a stream attached: from its latest state on, in order, then SUCCESS.
        assert progress and progress == [0, 1, 2][-len(progress) :] and last == "SUCCESS"
    assert len(summary["streamed"]) == 100
    health.sort()
    p95 = health[int(len(health) * 0.95)]
    assert p95 < HEALTH_P95, f"health p95 {p95:.3f} s (max {health[-1]:.3f} s)"
    assert health[-1] < HEALTH_MAX, f"health max {health[-1]:.3f} s"
    assert run.stop() == 0, run.log()
