"""Running the example apps as a user would: real servers, real processes, httpx as client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


class Server:
    """A command (``celeriac run``, ``flask run``, a worker) run from the repository root,
    its output kept for failure messages."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def log(self) -> str:
        return "".join(self.output)

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until ``url`` answers 200 (the server is up), or fail with the server's output."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args} exited:\n{self.log()}")
            try:
                return httpx.get(url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(up, timeout, url)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Reap the process and release its pipe (teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def servers() -> Iterator[Any]:
    started: list[Server] = []

    def start(argv: list[str], **env: str) -> Server:
        full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        server = Server(argv, full)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def port() -> int:
    return free_port()


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every Server-Sent Event in a response body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


CELERIAC = [sys.executable, "-m", "celeriac.cli"]
