"""``scripts/demo`` on a port something else already answers on: it says so and exits at
once, instead of polling that other server's /health at full CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services import free_port

ROOT = Path(__file__).resolve().parents[2]


class NotTheDemo(BaseHTTPRequestHandler):
    """Another web server: it answers, but not with the demo's 200 on /health."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output to the demo's own


@pytest.fixture
def other_server() -> Iterator[int]:
    """A free port, taken by another HTTP server for the test's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), NotTheDemo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_demo_exits_at_once_with_one_line_when_its_port_already_answers(
    other_server: int,
) -> None:
    env = {**os.environ, "CELERIAC_DEMO_PORT": str(other_server)}
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,  # it spun for 60 s before: a timeout here is the failure
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"scripts/demo: port {other_server} is already in use (another server, or a demo still"
        " running); stop it, or pick a free port with --port or CELERIAC_DEMO_PORT"
    ]
    assert "celeriac run" not in done.stdout  # nothing was started
    assert took < 20, f"took {took:.1f} s"


def test_the_demo_stops_waiting_when_its_server_exits_and_never_spins(other_server: int) -> None:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples/fastapi_app/demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    wait_until_up = demo.wait_until_up

    base = f"http://127.0.0.1:{free_port()}"
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait(30)
    assert wait_until_up(exited, base, 30) == (
        f"the example server exited with status 3 before answering on {base}"
    )

    # Alive, and its port answers, but never the demo's 200: polled gently until the deadline.
    alive = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        cpu = time.thread_time()
        problem = wait_until_up(alive, f"http://127.0.0.1:{other_server}", 1)
        cpu = time.thread_time() - cpu
    finally:
        alive.communicate(timeout=30)  # end of its stdin: it exits
    assert problem == (
        f"the example server did not answer on http://127.0.0.1:{other_server} within 1 s"
    )
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 1 s of waiting"
