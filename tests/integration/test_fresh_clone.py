"""The suite needs nothing outside the repository: the tests that read Celery's captured
messages pass in a fresh clone that has no ``shared/`` (or anything else) beside it.

The clone is of the checkout's HEAD (what is committed), in an empty temporary directory. It
runs with this venv's Python, its own ``src`` first on ``PYTHONPATH`` so that it imports its
own celeriac rather than the checkout's editable install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services import require_rabbitmq

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIXTURE_TESTS = (
    "tests/integration/test_amqp_fixtures.py",
    "tests/unit/test_amqp_properties.py",
    "tests/unit/test_kombu_redis.py",
    "tests/unit/test_protocol.py",
    "tests/unit/test_redis_fixtures.py",
    "tests/unit/test_resultmeta.py",
)


def _clone(into: Path) -> Path:
    if shutil.which("git") is None:
        pytest.fail("git is not installed; the fresh-clone test needs it")
    clone = into / "celeriac"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=60)
    return clone


def _env_for(clone: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(clone / "src"), env.get("PYTHONPATH", "")])
    env["CI"] = "true"  # a missing service or fixture fails, never skips
    return env


@pytest.mark.timeout(180)
def test_the_fixture_tests_pass_in_a_clone_with_nothing_beside_it(tmp_path: Path) -> None:
    require_rabbitmq()  # test_amqp_fixtures.py publishes the AMQP fixtures
    clone = _clone(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["celeriac"]
    env = _env_for(clone)

    where = subprocess.run(
        [sys.executable, "-c", "import celeriac; print(celeriac.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(clone / "src"), where.stdout

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FIXTURE_TESTS],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-30:])
    assert run.returncode == 0, tail
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary
