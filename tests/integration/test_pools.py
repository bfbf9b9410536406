"""Worker pools under a supervisor: several processes, several pools, recycling, crashes and
graceful stops, with real child processes on SQLite and Redis."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from services import wait_until

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_processes_share_the_work_and_one_sigterm_drains_them(
    supervise: Any, basic: Any, marks: Path
) -> None:
    supervisor = supervise("-P", "2", "-c", "2")
    children = supervisor.pids_ready(2)
    ran_in = {r.get(timeout=30) for r in [basic.pid_after.delay(0.05) for _ in range(20)]}
    assert ran_in == set(children)  # both processes took work, nobody else did
    running = basic.slow.delay(1.0, "drained")
    wait_until(lambda: (marks / "drained.start").exists(), 20, "the slow task to start")
    assert supervisor.stop(signal.SIGTERM) == 0  # waits for the running task
    assert (marks / "drained.end").exists()
    assert running.get(timeout=10) == "drained"
    assert not any(alive(pid) for pid in children)
    assert "all processes stopped" in supervisor.log()


def test_a_killed_child_is_replaced_and_its_tasks_run_elsewhere(
    supervise: Any, basic: Any, marks: Path
) -> None:
    # One task at a time each, none reserved ahead: both children get work.
    supervisor = supervise("-P", "2", "-c", "1", "--prefetch-multiplier", "1")
    first, second = supervisor.pids_ready(2)
    sent = [basic.pid_after.delay(1.0, f"k{i}") for i in range(4)]

    def starts(i: int) -> list[str]:
        path = marks / f"k{i}.start"
        return path.read_text().split() if path.exists() else []

    wait_until(
        lambda: any(str(first) in starts(i) for i in range(4)), 20, "a task in the first child"
    )
    os.kill(first, signal.SIGKILL)
    supervisor.wait_for("was killed by SIGKILL; starting another")
    replacement = supervisor.pids_ready(3)[-1]
    ran_in = [r.get(timeout=60) for r in sent]  # every task ends: nothing was lost
    rerun = [i for i in range(4) if str(first) in starts(i) and len(set(starts(i))) == 2]
    assert rerun, "what the killed child was running was not run again"
    assert all(ran_in[i] in (second, replacement) for i in rerun)
    assert alive(replacement) and alive(second)


def test_children_are_recycled_after_max_tasks_and_tear_down_their_resources(
    supervise: Any, basic: Any, marks: Path, tmp_path: Path
) -> None:
    (tmp_path / "recycling.py").write_text(
        "from basic import app\napp.conf.worker_max_tasks_per_child = 5\n"
    )
    supervisor = supervise(
        "--pool", "only: queues=celery processes=1 concurrency=1", app="recycling:app"
    )
    first = supervisor.pids_ready(1)[0]
    pids = [r.get(timeout=60) for r in [basic.resource_id_async.delay(i) for i in range(12)]]
    processes = [pid for pid, _ in pids]
    assert processes[0] == first
    assert len(set(processes)) == 3  # 5 + 5 + 2 tasks, one process after the other
    supervisor.wait_for("took 5 tasks (worker_max_tasks_per_child)", count=2)
    assert supervisor.stop(signal.SIGTERM) == 0
    # Every process built the resource once and tore it down once, recycled or stopped.
    built = (marks / "resource-built").read_text().split()
    closed = (marks / "resource-closed").read_text().split()
    assert sorted(built) == sorted(closed) == sorted(str(p) for p in set(processes))


def test_pools_keep_their_queues_apart(supervise: Any, basic: Any) -> None:
    supervisor = supervise(
        "--pool",
        "fast: queues=celery processes=1",
        "--pool",
        "bulk: queues=bulk,other processes=2 concurrency=3",
    )
    supervisor.pids_ready(3)
    children = supervisor.children()
    assert set(children) == {"fast-1", "bulk-1", "bulk-2"}
    fast = {basic.pid_after.delay(0.01).get(timeout=30) for _ in range(5)}
    bulk = {
        r.get(timeout=30)
        for r in [basic.pid_after.apply_async((0.05,), queue="bulk") for _ in range(12)]
    }
    assert fast == {children["fast-1"]}
    assert bulk == {children["bulk-1"], children["bulk-2"]}
    assert supervisor.stop(signal.SIGTERM) == 0


def test_a_child_that_fails_at_start_stops_the_supervisor_with_its_error(
    supervise: Any, tmp_path: Path
) -> None:
    (tmp_path / "broken_pool.py").write_text(
        "from celeriac import Celery\n"
        "app = Celery('broken')\n"
        "@app.resource\n"
        "async def smtp():\n"
        "    raise ConnectionRefusedError('smtp.invalid:25 refused')\n"
    )
    broken = supervise("-P", "2", app="broken_pool:app")
    assert broken.proc.wait(60) == 1
    log = broken.log()
    assert "resource 'smtp' failed to start" in log
    assert "exited with status 1" in log and "celeriac: error:" in log


def test_a_child_over_its_memory_limit_is_replaced(supervise: Any, tmp_path: Path) -> None:
    (tmp_path / "hungry.py").write_text(
        "from basic import app\napp.conf.worker_max_memory_per_child = 1024  # KiB: always over\n"
    )
    supervisor = supervise("-P", "1", app="hungry:app")
    first = supervisor.pids_ready(1)[0]
    supervisor.wait_for("over worker_max_memory_per_child=1024: stopping to be replaced")
    assert supervisor.pids_ready(2)[-1] != first
    assert supervisor.stop(signal.SIGTERM) == 0
