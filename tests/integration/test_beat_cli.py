"""``celeriac beat`` list/add/pause/resume/remove against a real SQLite file, and the errors
a mistyped command gets (one line, exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import APPS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True),
]


def beat(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac.cli", "-A", "periodic:app", "beat", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(APPS)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def rows(listing: str) -> dict[str, list[str]]:
    """``beat list``'s table: entry name -> its columns (split on runs of two spaces)."""
    lines = listing.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "TASK", "SCHEDULE"]
    return {
        line.split()[0]: [c.strip() for c in line.split("  ") if c.strip()] for line in lines[1:]
    }


def test_entries_are_added_paused_resumed_and_removed_from_the_command_line(
    broker_url: str, tmp_path: Path
) -> None:
    listed = beat(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    configured = rows(listed.stdout)["every-second"]
    assert configured[1:5] == ["periodic.noted", "every 1s", "active", "config"]

    added = beat(
        tmp_path, "add", "nightly", "periodic.noted", "--cron", "30 2 * * *", "--args", "[7]"
    )
    assert (added.returncode, added.stdout.strip()) == (0, "added nightly"), added.stderr
    assert beat(tmp_path, "pause", "every-second").stdout.strip() == "paused every-second"
    table = rows(beat(tmp_path, "list").stdout)
    assert table["nightly"][1:5] == ["periodic.noted", "cron 30 2 * * *", "active", "stored"]
    assert table["every-second"][3:5] == ["paused", "stored over config"]

    assert beat(tmp_path, "resume", "every-second").returncode == 0
    assert beat(tmp_path, "remove", "every-second").stdout.strip() == "removed every-second"
    assert beat(tmp_path, "remove", "nightly").returncode == 0
    table = rows(beat(tmp_path, "list").stdout)
    assert sorted(table) == ["every-second"]
    assert table["every-second"][3:5] == ["active", "config"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["add", "x", "periodic.noted"], "needs one of --every SECONDS or --cron"),
        (["add", "x", "periodic.noted", "--cron", "61 * * * *"], "61 is out of range"),
        (["add", "every-second", "periodic.noted", "--every", "5"], "exists"),
        (["pause", "nope"], "no periodic task 'nope'"),
        (["remove", "every-second"], "no stored periodic task 'every-second'"),
        (["pause"], "beat pause takes NAME, not nothing"),
        (["-S", "redbeat.RedBeatScheduler"], "-S redbeat.RedBeatScheduler: celeriac runs its own"),
    ],
)
def test_a_wrong_command_is_one_line_that_says_what_to_do(
    broker_url: str, tmp_path: Path, args: list[str], error: str
) -> None:
    done = beat(tmp_path, *args)
    assert done.returncode == 1
    assert done.stderr.startswith("celeriac: error: ") and error in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
