"""The ``rate_limit`` remote-control command across the two, on Redis and on RabbitMQ: real
Celery's ``app.control.rate_limit`` and ``celery control rate_limit`` set a celeriac worker's
limit, and celeriac's client and ``celeriac control rate_limit`` set a Celery worker's; each
reply is Celery's, and ``inspect registered`` shows the limit in force."""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType

import pytest

from interop.harness import TESTS, InteropRun, WorkerProcess, node_of

pytestmark = pytest.mark.integration

TIMEOUT = 20


def command_line(interop: InteropRun, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **interop.env())
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=60
    )


def test_celerys_client_sets_a_celeriac_workers_rate_limit(
    celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    control = celery.app.control
    try:
        set_ = control.rate_limit("interop.add", "5/s", destination=[node], reply=True, timeout=5)
        shown = control.inspect([node], timeout=5).registered("rate_limit")[node]
        unknown = control.rate_limit("interop.nope", "5/s", destination=[node], reply=True)
        bad = control.rate_limit("interop.add", "5/week", destination=[node], reply=True)
    finally:
        lifted = control.rate_limit("interop.add", 0, destination=[node], reply=True, timeout=5)
    assert set_ == [{node: {"ok": "new rate limit set successfully"}}]
    assert "interop.add [rate_limit=5/s]" in shown
    assert unknown == [{node: {"error": "unknown task"}}]
    assert bad[0][node]["error"].startswith("Invalid rate limit string: bad rate limit '5/week'")
    assert lifted == [{node: {"ok": "rate limit disabled successfully"}}]
    assert "interop.add" in control.inspect([node], timeout=5).registered("rate_limit")[node]


def test_the_celery_command_line_sets_a_celeriac_workers_rate_limit(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    app = ["celery", "-A", "interop.peers.celery_app", "control"]
    try:
        ran = command_line(interop, *app, "rate_limit", "interop.add", "10/m", "-d", node)
        shown = celery.app.control.inspect([node], timeout=5).registered()[node]
    finally:
        command_line(interop, *app, "rate_limit", "interop.add", "0", "-d", node)
    assert ran.returncode == 0, ran.stderr
    assert f"{node}: OK" in ran.stdout and "new rate limit set successfully" in ran.stdout
    assert "interop.add [rate_limit=10/m]" in shown


def test_celeriacs_client_sets_a_celery_workers_rate_limit(
    celeriac: ModuleType, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    control = celeriac.app.control
    try:
        set_ = control.rate_limit("interop.add", "5/s", destination=[node], reply=True)
        shown = control.inspect([node], timeout=5).registered("rate_limit")[node]
    finally:
        lifted = control.rate_limit("interop.add", 0, destination=[node], reply=True)
    assert set_ == [{node: {"ok": "new rate limit set successfully"}}]
    assert "interop.add [rate_limit=5/s]" in shown
    assert lifted == [{node: {"ok": "rate limit disabled successfully"}}]


def test_the_celeriac_command_line_sets_a_celery_workers_rate_limit(
    interop: InteropRun, celeriac: ModuleType, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    app = ["celeriac.cli", "-A", "interop.peers.celeriac_app:app", "control", "rate_limit"]
    try:
        ran = command_line(interop, *app, "interop.add", "7/m", "-d", node, "-t", "5")
        shown = celeriac.app.control.inspect([node], timeout=5).registered()[node]
    finally:
        command_line(interop, *app, "interop.add", "0", "-d", node, "-t", "5")
    assert ran.returncode == 0, ran.stderr
    assert f"->  {node}: OK" in ran.stdout and "new rate limit set successfully" in ran.stdout
    assert "interop.add [rate_limit=7/m]" in shown
