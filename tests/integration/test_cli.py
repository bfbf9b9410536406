"""The command line against a real SQLite file: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services import REDIS_DB_BROKER, redis_url, require_redis

from .conftest import APPS

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "celeriac.cli"]


def celeriac(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(APPS), **(env or {})}
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("command", ["worker", "result", "purge", "status"])
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    out = celeriac(command, "--help", cwd=tmp_path)
    assert out.returncode == 0
    assert "usage: celeriac" in out.stdout and command in out.stdout


def test_status_result_and_purge(basic: Any, tmp_path: Path, start_worker: Any) -> None:
    waiting = [basic.add.delay(1, 2) for _ in range(3)]
    basic.add.apply_async((1, 1), queue="other")
    status = celeriac("-A", "basic:app", "status", "-Q", "other", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "  celery: 3" in status.stdout and "  other: 1" in status.stdout
    assert "dead letters: 0" in status.stdout

    refused = celeriac("-A", "basic:app", "purge", cwd=tmp_path)
    assert refused.returncode == 1 and "confirm with -f" in refused.stderr
    purged = celeriac("-A", "basic:app", "purge", "-Q", "other", "-f", cwd=tmp_path)
    assert purged.returncode == 0 and "purged 1 message(s) from other" in purged.stdout

    pending = celeriac("-A", "basic:app", "result", waiting[0].id, cwd=tmp_path)
    assert json.loads(pending.stdout)["state"] == "PENDING"
    start_worker()
    done = celeriac(
        "-A", "basic:app", "result", waiting[0].id, "--wait", "--timeout", "20", cwd=tmp_path
    )
    assert json.loads(done.stdout) == {"id": waiting[0].id, "state": "SUCCESS", "result": 3}


def test_bad_app_path_is_one_line(tmp_path: Path, broker_url: str) -> None:
    for spec, expected in [
        ("nosuchmodule:app", "cannot import 'nosuchmodule'"),
        ("basic:nothing", "no Celery app found there"),
    ]:
        out = celeriac("-A", spec, "status", cwd=tmp_path)
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and expected in out.stderr
        assert "Traceback" not in out.stderr


def test_unusable_broker_is_one_line_and_debug_shows_traceback(
    tmp_path: Path, broker_url: str
) -> None:
    # An embedded broker where it cannot write; no Redis options (SQLite refuses them).
    bad = {
        "CELERIAC_BROKER_URL": "sqlite:////proc/celeriac-cannot-write/x.db",
        "CELERIAC_TEST_TRANSPORT_OPTIONS": "{}",
    }
    out = celeriac("-A", "basic:app", "worker", cwd=tmp_path, env=bad)
    assert out.returncode == 1
    assert "cannot open the SQLite database" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0
    debug = celeriac("-A", "basic:app", "worker", "-l", "debug", cwd=tmp_path, env=bad)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_worker_refused_by_redis_exits_with_one_line(tmp_path: Path) -> None:
    require_redis()
    url = redis_url(REDIS_DB_BROKER).replace("redis://", "redis://nobody:s3cret@")
    out = celeriac("-A", "basic:app", "worker", cwd=tmp_path, env={"CELERIAC_BROKER_URL": url})
    assert out.returncode == 1
    assert "refused the connection's set-up" in out.stderr and "check the user name" in out.stderr
    assert "s3cret" not in out.stderr and "Traceback" not in out.stderr


def test_result_follow_shows_progress_live_then_the_result(
    basic: Any, tmp_path: Path, start_worker: Any, marks: Path
) -> None:
    start_worker()
    running = basic.count_up.delay(4, "follow-release")
    env = {**os.environ, "PYTHONPATH": str(APPS)}
    follower = subprocess.Popen(
        [*CLI, "-A", "basic:app", "result", running.id, "--follow", "--timeout", "30"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stderr is not None
    first = follower.stderr.readline()  # shown while the task waits for the release below
    (marks / "follow-release").touch()
    out, rest = follower.communicate(timeout=30)
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert follower.returncode == 0, rest
    assert lines[0] == f"PROGRESS [{'#' * 8}{'-' * 22}] 1/4 25%"
    assert lines[-1] == f"PROGRESS [{'#' * 30}] 4/4 100%"
    assert json.loads(out)["state"] == "SUCCESS"

    failed = basic.boom.delay("no luck")
    done = celeriac("-A", "basic:app", "result", failed.id, "--follow", cwd=tmp_path)
    assert done.returncode == 1 and json.loads(done.stdout)["state"] == "FAILURE"
