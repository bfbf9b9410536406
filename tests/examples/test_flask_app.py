"""The Flask example: the classic 202 + Location + polling pattern, with a real Flask server
and a real worker, and 100 concurrent requests that leave no thread or loop behind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from services import wait_until

from .conftest import CELERIAC

pytestmark = pytest.mark.integration


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_the_flask_example(servers: Any, port: int, tmp_path: Path) -> None:
    env = {"CELERIAC_BROKER_URL": f"sqlite:///{tmp_path / 'broker.db'}"}
    worker = servers([*CELERIAC, "-A", "examples.flask_app.app", "worker", "-c", "200"], **env)
    web = servers(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "examples.flask_app.app:web",
            "run",
            "--port",
            str(port),
        ],
        **env,
    )
    base = f"http://127.0.0.1:{port}"
    web.wait_http(base + "/tasks/none")
    with httpx.Client(base_url=base, timeout=30) as http:
        started = http.post("/tasks", json={"steps": 3, "delay": 0.2})
        assert started.status_code == 202
        location = started.headers["Location"]
        assert location == f"/tasks/{started.json()['task_id']}"
        states = []

        def finished() -> bool:
            body = http.get(location).json()
            states.append(body)
            return bool(body["state"] == "SUCCESS")

        wait_until(finished, 30, "the long task to succeed")
        assert any(s["state"] == "PROGRESS" and s["progress"]["total"] == 3 for s in states)
        assert states[-1]["result"] == {"current": 3, "total": 3, "status": "done"}
        failed = http.post("/tasks", json={"fail": "no such file"}).headers["Location"]
        wait_until(lambda: http.get(failed).json()["state"] == "FAILURE", 30, "the failure")
        assert http.get(failed).json()["error"] == "ValueError: no such file"

    before = threads_of(web.proc.pid)

    async def load() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            answers = await asyncio.gather(
                *(http.post("/tasks", json={"steps": 1, "delay": 0.01}) for _ in range(100))
            )
            ids = [a.json()["task_id"] for a in answers]
            polls = await asyncio.gather(*(http.get(f"/tasks/{i}") for i in ids))
            return [a.status_code for a in answers] + [p.status_code for p in polls]

    codes = asyncio.run(load())
    assert codes == [202] * 100 + [200] * 100
    # Werkzeug's request threads end with their requests; celeriac adds its one bridge
    # thread (and its one event loop) per process, not one per request.
    wait_until(lambda: threads_of(web.proc.pid) <= before + 1, 10, "request threads to end")
    web.stop()
    assert worker.stop() == 0, worker.log()
