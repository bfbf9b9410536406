"""The supervisor's rules, with tiny stand-in children (``python -c``): a child that reported
on its ready pipe is restarted whatever ends it, one that did not failed to start; restarts
back off; the web server (no pipe) is judged by time."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from celeriac.worker import supervisor
from celeriac.worker.supervisor import (
    FIRST_BACKOFF,
    MAX_BACKOFF,
    READY_BYTE,
    STABLE_AFTER,
    Backoff,
    Child,
    Supervisor,
    ready_reporter,
)

#: A stand-in child: counts its runs in argv[1], reports ready on the pipe the supervisor
#: gave it when argv[2] says so, then exits with the status in argv[3].
CHILD = """
import os, sys
with open(sys.argv[1], "a") as runs:
    runs.write("run\\n")
if sys.argv[2] == "report":
    fd = int(sys.argv[sys.argv.index("--ready-fd") + 1])
    os.write(fd, b"r")
os._exit(int(sys.argv[3]))
"""


def child(runs: Path, report: bool, status: int, *, reports_ready: bool = True) -> Child:
    argv = (sys.executable, "-c", CHILD, str(runs), "report" if report else "silent", str(status))
    return Child("test-1", argv, reports_ready=reports_ready)


def run_count(runs: Path) -> int:
    return len(runs.read_text().split()) if runs.exists() else 0


async def supervise_until(slot: Child, runs: Path, count: int, timeout: float = 20.0) -> int:
    """Run a supervisor of ``slot`` until its child has run ``count`` times, then stop it;
    its exit code. Fails if it ends by itself first or the runs never come."""
    keeper = Supervisor([slot], "test")
    running = asyncio.create_task(keeper.run())
    deadline = asyncio.get_running_loop().time() + timeout
    while run_count(runs) < count:
        assert not running.done(), f"the supervisor ended after {run_count(runs)} run(s)"
        assert asyncio.get_running_loop().time() < deadline, f"{count} runs never came"
        await asyncio.sleep(0.01)
    keeper.stop()
    return await asyncio.wait_for(running, timeout)


async def test_a_child_that_crashes_after_it_reported_ready_is_restarted_with_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "celeriac.supervisor")
    runs = tmp_path / "runs"
    assert await supervise_until(child(runs, report=True, status=3), runs, count=4) == 0
    ends = [r.getMessage() for r in caplog.records if "starting another" in r.getMessage()]
    assert len(ends) >= 3
    assert "process test-1 (pid " in ends[0]
    consumed = ", which had been consuming, exited with status 3; starting another in 0.2 s"
    assert ends[0].endswith(consumed)
    assert ends[1].endswith("starting another in 0.4 s")
    assert ends[2].endswith("starting another in 0.8 s")


async def test_a_child_killed_after_it_reported_ready_is_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "celeriac.supervisor")
    runs = tmp_path / "runs"
    script = CHILD.replace("os._exit(int(sys.argv[3]))", "os.kill(os.getpid(), 9)")
    argv = (sys.executable, "-c", script, str(runs), "report", "0")
    assert await supervise_until(Child("test-1", argv), runs, count=2) == 0
    assert "which had been consuming, was killed by SIGKILL; starting another in" in caplog.text


async def test_a_child_that_ends_before_it_reports_ready_stops_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time window decides for a worker child: even a child that "ran long enough" by the
    # web server's rule failed to start if it never reported.
    monkeypatch.setattr(supervisor, "STARTUP_GRACE", 0.0)
    runs = tmp_path / "runs"
    keeper = Supervisor([child(runs, report=False, status=3)], "test")
    assert await asyncio.wait_for(keeper.run(), 20) == 1
    assert run_count(runs) == 1
    error = capsys.readouterr().err
    assert error.startswith("celeriac: error: process test-1 (pid ")
    assert "exited with status 3 before it started consuming" in error
    assert "see its error above" in error


async def test_a_child_killed_before_it_reports_ready_stops_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    script = CHILD.replace("os._exit(int(sys.argv[3]))", "os.kill(os.getpid(), 9)")
    argv = (sys.executable, "-c", script, str(runs), "silent", "0")
    assert await asyncio.wait_for(Supervisor([Child("test-1", argv)], "test").run(), 20) == 1
    assert run_count(runs) == 1
    assert "was killed by SIGKILL before it started consuming" in capsys.readouterr().err


async def test_a_child_without_a_ready_pipe_is_judged_by_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "quick"
    web = child(runs, report=False, status=3, reports_ready=False)
    assert await asyncio.wait_for(Supervisor([web], "test").run(), 20) == 1
    assert "exited with status 3 0." in capsys.readouterr().err
    monkeypatch.setattr(supervisor, "STARTUP_GRACE", 0.0)  # every failure now comes "late"
    runs = tmp_path / "late"
    late = child(runs, report=False, status=3, reports_ready=False)
    assert "--ready-fd" not in late.argv
    assert await supervise_until(late, runs, count=2) == 0


def test_backoff_doubles_up_to_its_cap_and_resets_after_a_long_run() -> None:
    backoff = Backoff()
    quick = STABLE_AFTER / 10
    delays = [backoff.after(quick) for _ in range(12)]
    assert delays[:3] == [FIRST_BACKOFF, FIRST_BACKOFF * 2, FIRST_BACKOFF * 4]
    assert delays == sorted(delays) and delays[-1] == MAX_BACKOFF
    assert backoff.after(STABLE_AFTER) == 0.0  # it ran a while: restarted at once
    assert backoff.after(quick) == FIRST_BACKOFF  # and the next quick end starts over
    for _ in range(5000):  # a child dying for days never overflows the arithmetic
        backoff.after(quick)
    assert backoff.after(quick) == MAX_BACKOFF


def test_ready_reporter_writes_one_byte_once_and_survives_a_gone_supervisor() -> None:
    read_end, write_end = os.pipe()
    report = ready_reporter(write_end)
    report()
    report()  # a second call must not write again nor close a reused descriptor number
    assert os.read(read_end, 16) == READY_BYTE
    assert os.read(read_end, 16) == b""  # its end is closed: end of file
    os.close(read_end)

    read_end, write_end = os.pipe()
    os.close(read_end)  # the supervisor died
    ready_reporter(write_end)()  # no BrokenPipeError: the worker goes on
    with pytest.raises(OSError):
        os.fstat(write_end)  # and the pipe was closed all the same
