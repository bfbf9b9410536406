"""Real worker processes, driven from the test process, on every transport of
``tests/transports.py`` that a subprocess can reach (the ``broker_url`` fixture).

``start_worker`` starts ``celeriac -A <app> worker`` as a child process and returns once it
logs that it is ready; its log lines are collected so tests can wait for a specific one.
Every wait has a timeout; nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services import (
    add_amqp_vhost,
    delete_amqp_queues,
    delete_amqp_vhost,
    require_rabbitmq,
)
from transports import TRANSPORTS, Corner, Transport

APPS = Path(__file__).parent / "apps"
READY = " ready: pid "
#: Short, so a test of a killed worker sees its messages restored within seconds.
REDIS_VISIBILITY_TIMEOUT = 2.0


class WorkerProcess:
    """A worker child process and the log lines it has written so far."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0, count: int = 1) -> str:
        """Block until ``count`` log lines contain ``text``; return the last of them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.lines if text in line]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"worker never logged {text!r} ({count}x); log:\n" + self.log()
                    )
                self._changed.wait(left)

    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        """Reap the process and release its pipe (teardown)."""
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


#: Every queue (and exchange) name the worker tests can make on RabbitMQ: deleted after each.
AMQP_NAMES = [
    "celery",
    "other",
    *(f"celeriac.delay.{q}.{4**k}" for q in ("celery", "other") for k in range(16)),
    "celeriac.dead",
    "beat-runs",  # apps/periodic.py's runs
    "celeriac.lead.beat",  # the schedulers' lead on RabbitMQ alone (celeriac.beat.rabbitmq)
]


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """This test session's own RabbitMQ virtual host (the tests' queue names are fixed)."""
    require_rabbitmq()
    vhost = f"celeriac-test-{uuid.uuid4().hex[:12]}"
    add_amqp_vhost(vhost)
    yield vhost
    delete_amqp_vhost(vhost)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """rpc:// results reach only the process that sent the task: tests run on it (the
    ``rpc`` broker_url) only when they are marked ``rpc``, i.e. read results nowhere else."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_rpc = callspec is not None and callspec.params.get("broker_url") == "rpc"
        (dropped if on_rpc and item.get_closest_marker("rpc") is None else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


#: The transports a worker subprocess can reach: those ``broker_url`` runs the tests on.
WORKER_TRANSPORTS = [name for name, t in TRANSPORTS.items() if not t.in_process]
#: Where a run on a broker that keeps no results keeps them.
RESULTS_ELSEWHERE = "redis"
#: Broker options of this suite's own, on top of the store's.
BROKER_OPTIONS: dict[str, dict[str, Any]] = {
    "redis": {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT},
}


def worker_stores(name: str) -> tuple[Transport, Transport]:
    """The broker and the result backend of a worker run on transport ``name``: the
    transport itself for what it is; a result backend that rides on a broker's server (rpc://)
    with that broker; a broker that keeps no results with ``RESULTS_ELSEWHERE``."""
    transport = TRANSPORTS[name]
    broker = transport if transport.broker else TRANSPORTS[transport.rides_on or ""]
    results = transport if transport.backend else TRANSPORTS[RESULTS_ELSEWHERE]
    return broker, results


@pytest.fixture(params=WORKER_TRANSPORTS)
def broker_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh broker and result store for this test (``worker_stores``), set in the
    environment for both sides: a SQLite file; Redis (DBs 14/15) under a key prefix of its
    own, deleted afterwards; or RabbitMQ in the session's virtual host (queues deleted
    afterwards) with results in Redis, or (``rpc``) sent back over RabbitMQ by rpc://."""
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("CELERIAC_TEST_MARKS", str(marks))
    broker, results = worker_stores(request.param)
    broker.require()
    results.require()
    on_rabbitmq = broker.server == "rabbitmq"
    vhost = request.getfixturevalue("amqp_vhost") if on_rabbitmq else None
    corner = Corner(tmp_path, name=f"celeriac-it-{uuid.uuid4().hex}", amqp_vhost=vhost)
    queues, records = broker.store(corner, "broker"), results.store(corner, "backend")
    options = {**queues.options, **BROKER_OPTIONS.get(broker.name, {})}
    monkeypatch.setenv("CELERIAC_BROKER_URL", queues.url)
    monkeypatch.setenv("CELERIAC_TEST_TRANSPORT_OPTIONS", json.dumps(options))
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", records.url)
    _set_or_unset(
        monkeypatch, "CELERIAC_TEST_RESULT_PREFIX", records.options.get("global_keyprefix")
    )
    _set_or_unset(monkeypatch, "CELERIAC_TEST_MAX_PRIORITY", broker.max_priority)
    yield queues.url
    if on_rabbitmq:
        asyncio.run(delete_amqp_queues(AMQP_NAMES, queues.url))
    queues.clean()
    records.clean()


def _set_or_unset(monkeypatch: pytest.MonkeyPatch, name: str, value: object) -> None:
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, str(value))


@pytest.fixture
def marks(tmp_path: Path, broker_url: str) -> Path:
    return tmp_path / "marks"


@pytest.fixture
def start_worker(broker_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, app: str = "basic:app", wait: bool = True) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "celeriac.cli", "-A", app, "worker", "-l", "info", *args]
        worker = WorkerProcess(argv, env, tmp_path)
        started.append(worker)
        if wait:
            worker.wait_for(READY)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def basic(broker_url: str) -> Iterator[object]:
    """The ``basic`` test app's module, its sync connections closed afterwards."""
    import basic as module

    module.configure_from_env()
    yield module
    module.app.close()


@pytest.fixture
async def abasic(broker_url: str) -> AsyncIterator[object]:
    """The ``basic`` module for async tests: connected on the test's loop, closed after."""
    import basic as module

    module.configure_from_env()
    async with module.app.setup():
        yield module


@pytest.fixture
def supervise(broker_url: str, tmp_path: Path) -> Iterator[Any]:
    from .supervised import Supervised  # it builds on this module's WorkerProcess

    started: list[Supervised] = []

    def start(*args: str, app: str = "basic:app") -> Supervised:
        """``celeriac -A app worker *args``; modules written to tmp_path are importable."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(tmp_path), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "celeriac.cli", "-A", app, "worker", *args]
        process = Supervised(argv, env, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.stop(signal.SIGINT)  # twice: at once
            process.stop(signal.SIGINT)
        process.close()
