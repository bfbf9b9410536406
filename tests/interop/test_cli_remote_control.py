"""``celeriac inspect`` / ``celeriac control`` against real workers, on Redis and on
RabbitMQ: a Celery worker's replies print as ``celery inspect`` prints them, and a
celeriac worker acts on ``control``.

The workers are subprocesses started once for the module; every command names its
destination, so the other worker stays out of the replies.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from interop.harness import CELERIAC_APP, CELERY_APP, TESTS, InteropRun, WorkerProcess, node_of
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 30


def run(interop: InteropRun, program: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m <program> -A <its interop app> argv...``, on the run's broker."""
    env = dict(os.environ, **interop.env())
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    app = CELERIAC_APP if program == "celeriac.cli" else CELERY_APP
    return subprocess.run(
        [sys.executable, "-m", program, "-A", app, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def answering(interop: InteropRun, node: str) -> None:
    """Once ``node`` answers celeriac's ping (a worker subscribes to remote control just
    after its ready line)."""
    wait_until(
        lambda: (
            run(interop, "celeriac.cli", "inspect", "ping", "-d", node, "-t", "2").returncode == 0
        ),
        TIMEOUT,
        f"{node} to answer celeriac inspect ping",
    )


@pytest.fixture(scope="module")
def celery_worker(interop: InteropRun) -> WorkerProcess:
    worker = interop.start_celery_worker(interop.pool[:2])
    answering(interop, node_of(worker))
    return worker


@pytest.fixture(scope="module")
def celeriac_worker(interop: InteropRun) -> WorkerProcess:
    worker = interop.start_celeriac_worker(interop.pool[2:4])
    answering(interop, node_of(worker))
    return worker


def test_inspect_ping_prints_a_celery_workers_reply_as_celery_does(
    interop: InteropRun, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    ours = run(interop, "celeriac.cli", "inspect", "ping", "-d", node, "-t", "5")
    theirs = run(interop, "celery", "inspect", "ping", "-d", node, "-t", "5")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == f"->  {node}: OK\n        pong\n\n1 node online.\n"
    assert theirs.returncode == 0, theirs.stderr
    assert ours.stdout == theirs.stdout


def test_inspect_stats_and_registered_of_a_celery_worker(
    interop: InteropRun, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    stats = run(interop, "celeriac.cli", "inspect", "stats", "-d", node, "-t", "5")
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith(f"->  {node}: OK\n    {{\n")
    assert f'"pid": {celery_worker.proc.pid},' in stats.stdout
    assert stats.stdout.endswith("\n\n1 node online.\n")
    registered = run(interop, "celeriac.cli", "inspect", "registered", "-d", node, "-t", "5")
    assert registered.returncode == 0, registered.stderr
    assert "\n    * interop.add\n" in registered.stdout


def test_inspect_json_of_a_celery_worker_is_celerys(
    interop: InteropRun, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    ours = run(interop, "celeriac.cli", "inspect", "active", "-d", node, "-t", "5", "--json")
    theirs = run(interop, "celery", "inspect", "active", "-d", node, "-t", "5", "--json")
    assert ours.returncode == 0 and theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout == f'{{"{node}": []}}\n'


def test_control_pool_grow_grows_a_celeriac_worker(
    interop: InteropRun, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    grown = run(interop, "celeriac.cli", "control", "pool_grow", "1", "-d", node, "-t", "5")
    assert grown.returncode == 0, grown.stderr
    assert grown.stdout == f"->  {node}: OK\n        pool will grow\n"


def test_no_reply_exits_69_as_celery_does(interop: InteropRun) -> None:
    nobody = "nobody@nowhere"
    ours = run(interop, "celeriac.cli", "inspect", "ping", "-d", nobody, "-t", "0.5")
    theirs = run(interop, "celery", "inspect", "ping", "-d", nobody, "-t", "0.5")
    assert ours.returncode == theirs.returncode == 69
    # The last line: on RabbitMQ a warning of the AMQP client may come before it.
    assert ours.stderr.splitlines()[-1] == "Error: No nodes replied within time constraint"
    assert theirs.stderr == "Error: No nodes replied within time constraint\n"
