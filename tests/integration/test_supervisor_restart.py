"""A task that crashes its worker process does not stop a ``-P N`` fleet: the supervisor
restarts a child that had started consuming, and stops only for a child that never did
(real ``celeriac worker -P 2`` commands on a SQLite file)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True),
]


@pytest.mark.parametrize(
    "how, ended", [("exit", "exited with status 3"), ("kill", "was killed by SIGKILL")]
)
def test_a_task_that_crashes_its_process_does_not_stop_the_fleet(
    supervise: Any, basic: Any, marks: Path, how: str, ended: str
) -> None:
    import crashing

    # One task at a time each, none reserved ahead: the good tasks need the other child too.
    fleet = supervise("-P", "2", "-c", "1", "--prefetch-multiplier", "1", app="crashing:app")
    fleet.pids_ready(2)
    poison = crashing.crash_once.delay("crashed", how)
    line = fleet.wait_for(f"{ended}; starting another")
    crashed = int((marks / "crashed").read_text().split()[0])
    assert f"(pid {crashed}), which had been consuming, {ended}; starting another in " in line

    good = [basic.add.delay(i, i) for i in range(20)]
    assert [r.get(timeout=60) for r in good] == [2 * i for i in range(20)]
    # Its message came back (the broker's recovery) and ran again: nothing was lost.
    assert poison.get(timeout=60) != crashed
    replacement = fleet.pids_ready(3)[-1]
    assert replacement != crashed
    assert fleet.proc.poll() is None  # the supervisor kept running all along
    assert fleet.stop(signal.SIGTERM) == 0
    assert "all processes stopped" in fleet.log()
    assert "celeriac: error:" not in fleet.log()


def test_a_child_that_dies_before_it_consumes_stops_the_command(supervise: Any) -> None:
    # Killed by a signal while its resources start: no restart could do better.
    broken = supervise("-P", "2", app="dies_at_start:app")
    assert broken.proc.wait(30) == 1
    log = broken.log()
    assert "was killed by SIGKILL before it started consuming" in log
    assert "celeriac: error: process default-" in log
    assert " ready: pid " not in log
