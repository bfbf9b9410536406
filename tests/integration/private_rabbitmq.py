"""A RabbitMQ node of the tests' own, for what must not happen to the shared one: stopping
it mid-run, or a short ``consumer_timeout``.

It runs the machine's ``rabbitmq-server`` under another node name, on free ports, with its
data and logs in a directory of its own, and is stopped (and that directory deleted) at the
end. The shared node is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from services import free_port, unavailable

#: Node start-up takes 10-30 s on the CI machine; stop_app/start_app a few seconds.
START_TIMEOUT = 90.0


class PrivateRabbitMQ:
    """One private node; ``consumer_timeout_ms`` is written to its configuration, and the
    channel tick (which checks it, every minute by default) set to a second."""

    def __init__(self, consumer_timeout_ms: int | None = None) -> None:
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            if shutil.which(tool) is None:
                unavailable(f"{tool} is not installed (apt-get install rabbitmq-server)")
        # rabbitmq-server started by root runs as the rabbitmq user, which must reach this
        # directory: a world-readable one of its own, not pytest's private tmp_path.
        self.directory = Path(tempfile.mkdtemp(prefix="celeriac-rabbitmq-"))
        self.directory.chmod(0o755)
        self.port = free_port()
        self.node = f"celeriac-test-{self.port}@localhost"
        config = ["loopback_users = none"]
        if consumer_timeout_ms is not None:
            config.append(f"consumer_timeout = {consumer_timeout_ms}")
        (self.directory / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        (self.directory / "advanced.config").write_text(
            "[{rabbit, [{channel_tick_interval, 1000}]}].\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        for sub in ("mnesia", "log"):
            (self.directory / sub).mkdir()
        if os.geteuid() == 0:
            for path in [self.directory, *self.directory.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        with (self.directory / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                ["rabbitmq-server"], env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self._await_startup()

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: every connection is closed, the node stays up."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self._await_startup()

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr}{self.log()}")
        return done.stdout

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(
                ["rabbitmqctl", "-n", self.node, "stop"],
                env=self.env,
                capture_output=True,
                timeout=START_TIMEOUT,
            )
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        logs = [*sorted((self.directory / "log").glob("*.log")), self.directory / "server.out"]
        return "".join(path.read_text(errors="replace")[-4000:] for path in logs if path.exists())

    def _await_startup(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the private RabbitMQ node exited:\n{self.log()}")
            waited = subprocess.run(
                ["rabbitmqctl", "-n", self.node, "await_startup", "--timeout", "5"],
                env=self.env,
                capture_output=True,
                timeout=START_TIMEOUT,
            )
            if waited.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the private RabbitMQ node did not start:\n{self.log()}")
