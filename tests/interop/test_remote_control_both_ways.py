"""Remote control across the two: real Celery's ``app.control`` and ``celery inspect`` /
``celery control`` reach a celeriac worker, and celeriac's ``app.control`` reaches a real
Celery worker, on Redis and on RabbitMQ.

Each side's worker is a subprocess started once for the module; requests name their
destination, so the other worker of the module stays out of the replies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from interop.harness import TESTS, InteropRun, WorkerProcess, node_of
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20


# -- Celery's client, celeriac's worker -----------------------------------------------------


def test_celerys_inspect_reads_a_celeriac_worker(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    inspect = celery.app.control.inspect([node], timeout=5)
    assert inspect.ping() == {node: {"ok": "pong"}}
    stats = inspect.stats()[node]
    assert isinstance(stats["total"], dict) and stats["pid"] == celeriac_worker.proc.pid
    assert stats["broker"]["transport"] == interop.transport
    registered = inspect.registered()[node]
    assert "interop.add" in registered and not any(n.startswith("celery.") for n in registered)
    queues = [q["name"] for q in inspect.active_queues()[node]]
    assert queues == celeriac_worker.argv[celeriac_worker.argv.index("-Q") + 1].split(",")
    assert inspect.active() == {node: []}
    assert inspect.scheduled() == {node: []}
    assert isinstance(inspect.conf()[node], dict)
    assert inspect.clock()[node]["clock"] > 0


def test_celerys_inspect_sees_a_running_task_on_a_celeriac_worker(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node, name = node_of(celeriac_worker), interop.marker()
    queue = interop.pool[0]
    result = celery.app.send_task("interop.wait_for_mark", (name,), queue=queue)
    inspect = celery.app.control.inspect([node], timeout=5)
    active = wait_until(lambda: inspect.active()[node], TIMEOUT, "the task to run")
    assert [(t["id"], t["name"]) for t in active] == [(result.id, "interop.wait_for_mark")]
    assert active[0]["args"] == [name] and active[0]["acknowledged"] is True
    found = inspect.query_task(result.id)[node]
    assert found[result.id][0] == "active"
    (interop.marks / name).touch()
    assert result.get(timeout=TIMEOUT) == name


def test_celerys_control_acts_on_a_celeriac_worker(
    celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    control = celery.app.control
    grown = control.pool_grow(2, destination=[node], reply=True, timeout=5)
    assert grown == [{node: {"ok": "pool will grow"}}]
    assert control.inspect([node], timeout=5).stats()[node]["pool"]["max-concurrency"] > 2
    limited = control.time_limit("interop.add", soft=10, hard=20, destination=[node], reply=True)
    assert limited == [{node: {"ok": "time limits set successfully"}}]
    unknown = control.broadcast("no_such_cmd", destination=[node], reply=True, timeout=5)
    assert unknown == [{node: {"error": "KeyError('no_such_cmd')"}}]


def test_the_celery_command_line_inspects_a_celeriac_worker(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    env = dict(os.environ, **interop.env())
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "celery", "-A", "interop.peers.celery_app"]
    for command, expected in (
        ("ping", "pong"),
        ("active", "- empty -"),
        ("stats", '"total"'),
        ("registered", "interop.add"),
    ):
        ran = subprocess.run(
            [*argv, "inspect", command, "-d", node, "-t", "5"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        assert f"{node}: OK" in ran.stdout and expected in ran.stdout, ran.stdout


def test_celerys_shutdown_stops_a_celeriac_worker(interop: InteropRun, celery: ModuleType) -> None:
    worker = interop.start_celeriac_worker([interop.private_queue()])
    node = node_of(worker)
    inspect = celery.app.control.inspect([node], timeout=0.5)
    wait_until(inspect.ping, TIMEOUT, "the new worker to answer")
    celery.app.control.shutdown(destination=[node])
    assert worker.proc.wait(TIMEOUT) == 0
    assert "remote control asked it to shut down" in worker.log()


# -- celeriac's client, Celery's worker -----------------------------------------------------


def test_celeriacs_inspect_reads_a_celery_worker(
    celeriac: ModuleType, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    inspect = celeriac.app.control.inspect([node], timeout=5)
    assert inspect.ping() == {node: {"ok": "pong"}}
    stats: dict[str, Any] = inspect.stats()[node]
    assert stats["pid"] == celery_worker.proc.pid and "broker" in stats
    assert "interop.add" in inspect.registered()[node]
    queues = {q["name"] for q in inspect.active_queues()[node]}
    assert queues == set(celery_worker.argv[celery_worker.argv.index("-Q") + 1].split(","))
    replies = celeriac.app.control.broadcast("no_such_cmd", destination=[node], reply=True)
    ((_, value),) = replies[0].items()
    assert "no_such_cmd" in value["error"]


def test_celeriacs_ping_without_a_destination_hears_both_kinds_of_worker(
    celeriac: ModuleType,
    celery: ModuleType,
    celery_worker: WorkerProcess,
    celeriac_worker: WorkerProcess,
) -> None:
    replies = celeriac.app.control.ping(timeout=2)
    nodes = {node for reply in replies for node in reply}
    assert {node_of(celery_worker), node_of(celeriac_worker)} <= nodes


# -- both command lines ----------------------------------------------------------------------


def _command_line(interop: InteropRun, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **interop.env())
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_celery_command_line_revokes_and_shuts_down_celeriac_workers(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    app = ["celery", "-A", "interop.peers.celery_app"]
    revoked = _command_line(interop, *app, "control", "revoke", "an-id", "-d", node, "-t", "5")
    assert revoked.returncode == 0, revoked.stderr
    assert f"{node}: OK" in revoked.stdout and "flagged as revoked" in revoked.stdout
    assert "an-id" in celery.app.control.inspect([node], timeout=5).revoked()[node]
    private = interop.start_celeriac_worker([interop.private_queue()])
    stopped = _command_line(interop, *app, "control", "shutdown", "-d", node_of(private), "-t", "1")
    assert private.proc.wait(TIMEOUT) == 0, stopped.stdout + stopped.stderr


def test_celery_events_dump_shows_a_celeriac_workers_events(
    interop: InteropRun, celery: ModuleType
) -> None:
    env = dict(os.environ, **interop.env())
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "celery", "-A", "interop.peers.celery_app", "events"]
    dump = WorkerProcess([*argv, "--dump"], env, interop.tmp)
    try:
        dump.wait_for("evdump: starting capture", TIMEOUT)
        queue = interop.private_queue()
        worker = interop.start_celeriac_worker([queue], "-E", "--heartbeat-interval", "0.5")
        node = node_of(worker)
        dump.wait_for(f"{node} [", TIMEOUT)
        result = celery.app.send_task("interop.add", (20, 22), queue=queue)
        assert result.get(timeout=TIMEOUT) == 42
        line = dump.wait_for(f"task succeeded: interop.add({result.id})", TIMEOUT)
        assert node in line and "result=42" in line
        interop.stop_worker(worker)
        dump.wait_for(f"{node} [", TIMEOUT, count=1)
        assert node in dump.wait_for("] shutdown: ", TIMEOUT)
    finally:
        dump.close()


def test_the_celeriac_command_line_revokes_on_a_celery_worker(
    interop: InteropRun, celeriac: ModuleType, celery_worker: WorkerProcess
) -> None:
    node = node_of(celery_worker)
    argv = ["celeriac.cli", "-A", "interop.peers.celeriac_app:app", "control", "revoke"]
    ran = _command_line(interop, *argv, "some-id", "-d", node, "-t", "5")
    assert ran.returncode == 0, ran.stderr
    assert f"->  {node}: OK" in ran.stdout and "flagged as revoked" in ran.stdout
    assert "some-id" in celeriac.app.control.inspect([node], timeout=5).revoked()[node]
