"""The README's demo: the FastAPI example on the embedded broker, called as curl would.

Starts a local SMTP server that keeps what it receives (the email pool's target), then
``celeriac run examples.fastapi_app.main:api`` (web server and every worker pool, one
command) in a throw-away directory; calls a few endpoints, printing each as a curl line and
its answer; then stops everything with one SIGTERM. ``--serve`` leaves it running (Ctrl-C
stops it) so you can try the curl lines yourself.

    scripts/demo [--serve] [--port 8000]     # or CELERIAC_DEMO_PORT=8001 scripts/demo

A port that something already listens on, or a server that exits before it answers, stops
the demo at once with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


class Inbox:
    def __init__(self) -> None:
        self.recipients: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.recipients.extend(envelope.rcpt_tos)
        return "250 OK"


def call(http: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    data = f" -H 'content-type: application/json' -d '{json.dumps(body)}'" if body else ""
    print(f"$ curl -s -X {method} http://{http.base_url.host}:{http.base_url.port}{path}{data}")
    answer = http.request(method, path, json=body)
    text = answer.text.strip()
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        print("\n".join("  " + line for line in text.splitlines() if line))
    else:
        print("  " + text)
    print()


def port_in_use(port: int) -> bool:
    """Something already accepts connections on ``port`` (another server, an earlier demo)."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_until_up(run: subprocess.Popen[bytes], base: str, timeout: float) -> str | None:
    """Until the server answers /health; or why it never will (it exited, or time ran out)."""
    deadline = time.monotonic() + timeout
    while True:
        status = run.poll()
        if status is not None:
            return f"the example server exited with status {status} before answering on {base}"
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return None
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            return f"the example server did not answer on {base} within {timeout:.0f} s"
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep running until Ctrl-C")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("CELERIAC_DEMO_PORT", "8000"))
    )
    args = parser.parse_args()
    if port_in_use(args.port):
        print(
            f"scripts/demo: port {args.port} is already in use (another server, or a demo still"
            " running); stop it, or pick a free port with --port or CELERIAC_DEMO_PORT",
            file=sys.stderr,
        )
        return 1
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=8025)
    smtp.start()
    with tempfile.TemporaryDirectory(prefix="celeriac-demo-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        Image.new("RGB", (640, 480), (30, 120, 200)).save(data / "photo.png")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CELERIAC_BROKER_URL": f"sqlite:///{tmp}/celeriac.db",
            "EXAMPLE_SMTP_HOST": "127.0.0.1",
            "EXAMPLE_SMTP_PORT": "8025",
            "EXAMPLE_DATA_DIR": str(data),
        }
        command = [sys.executable, "-m", "celeriac.cli", "run", "examples.fastapi_app.main:api"]
        command += ["--port", str(args.port), "-l", "warning"]
        print("$ celeriac run examples.fastapi_app.main:api   # web server + 9 worker processes")
        # Its own session: a Ctrl-C here reaches only this script, which stops it with one
        # SIGTERM (two signals would stop the workers at once).
        run = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{args.port}"
            problem = wait_until_up(run, base, 60)
            if problem is not None:
                print(f"scripts/demo: {problem}", file=sys.stderr)
                return 1
            print(f"serving on {base} (API docs at {base}/docs)\n")
            with httpx.Client(base_url=base, timeout=60) as http:
                call(http, "GET", "/health")
                call(
                    http,
                    "POST",
                    "/api/email/send",
                    {
                        "to": "ann@example.com",
                        "subject": "Hello",
                        "body": "Sent by a worker process.",
                    },
                )
                call(
                    http,
                    "POST",
                    "/api/email/send-bulk",
                    {
                        "recipients": ["bob@example.com", "cy@example.com", "di@example.com"],
                        "subject": "News",
                        "body": "...",
                    },
                )
                call(
                    http,
                    "POST",
                    "/api/image/resize",
                    {"path": str(data / "photo.png"), "width": 320, "height": 240},
                )
                call(http, "POST", "/api/data/aggregate", {"values": [3, 1, 4, 1, 5]})
                call(
                    http,
                    "POST",
                    "/api/data/etl",
                    {
                        "rows": [
                            {"region": "north", "amount": 12.5},
                            {"region": "south", "amount": 7},
                        ]
                    },
                )
                call(http, "GET", "/api/data/query?region=north")
            print(f"the SMTP server received mail for: {', '.join(sorted(inbox.recipients))}")
            if args.serve:
                print("\nrunning; try the curl lines above. Ctrl-C stops everything.")
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGTERM)
            status = run.wait(60)
            smtp.stop()
    print(f"stopped (celeriac run exited with {status})")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
