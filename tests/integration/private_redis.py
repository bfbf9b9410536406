"""A ``redis-server`` of a test's own, for what must not happen to the shared one: stopping it
mid-run, or settings such as a small ``proto-max-bulk-len`` or ``maxmemory``.

It listens on a free port of 127.0.0.1 with its files in a directory of the test's; the
shared server is never touched.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import redis

from services import free_port, unavailable, wait_until


class PrivateRedis:
    """One private server. ``persist``: every write goes to an append-only file, so the data
    survives a restart; otherwise nothing persists. ``options``: more ``--name value``
    arguments for ``redis-server``."""

    def __init__(
        self, directory: Path, *, persist: bool = False, options: Sequence[str] = ()
    ) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed (apt-get install redis-server)")
        self.directory = directory
        self.port = free_port()
        self.persist = persist
        self.options = list(options)
        self.proc: subprocess.Popen[bytes] | None = None
        #: A client of the test's own (redis-py), for what the test checks or sets.
        self.client = redis.Redis(port=self.port, socket_connect_timeout=1)

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the server and return once it answers (it may load its file first)."""
        persistence = ("--appendonly", "yes", "--appendfsync", "always") if self.persist else ()
        argv = [
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *(persistence or ("--appendonly", "no")),
            *("--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")),
            *self.options,
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            try:
                return bool(self.client.ping())  # BusyLoadingError while it loads the AOF
            except redis.exceptions.ConnectionError:
                return False

        wait_until(answers, 15, f"redis-server on port {self.port}")

    def stop(self) -> int:
        """SIGTERM (Redis writes what it has and exits) and wait; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def close(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text() if path.exists() else ""
