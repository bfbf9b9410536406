"""Celery's worker flags, read with Celery's meaning or refused with what to do instead."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import WorkerProcess
from .test_cli import celeriac

pytestmark = pytest.mark.integration
SQLITE_ONLY = pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)


@pytest.mark.parametrize("pool", ["prefork", "gevent", "eventlet"])
def test_celery_pool_types_without_an_equivalent_say_what_celeriac_does(
    pool: str, tmp_path: Path
) -> None:
    out = celeriac("-A", "basic:app", "worker", "-P", pool, cwd=tmp_path)
    assert out.returncode == 2
    assert "invalid int value" not in out.stderr
    assert f"celeriac has no {pool!r} pool" in out.stderr
    assert "async def tasks on its event loop and plain def tasks in a thread pool" in out.stderr
    assert "-P N" in out.stderr or "async def" in out.stderr.rsplit(";", 1)[1]


def test_prefork_names_the_flag_for_the_process_count(tmp_path: Path) -> None:
    out = celeriac("-A", "basic:app", "worker", "-P", "prefork", cwd=tmp_path)
    assert "give their number: -P N (or --processes N)" in out.stderr
    as_pool = celeriac("-A", "basic:app", "worker", "--pool", "prefork", cwd=tmp_path)
    assert as_pool.returncode == 1
    assert "--pool prefork: celeriac has no 'prefork' pool" in as_pool.stderr


def test_p_that_is_neither_a_count_nor_a_pool_type_is_one_clear_error(tmp_path: Path) -> None:
    out = celeriac("-A", "basic:app", "worker", "-P", "many", cwd=tmp_path)
    assert out.returncode == 2 and "invalid int value" not in out.stderr
    assert "'many' is not a number of processes (-P 4) nor one of Celery's pool" in out.stderr


@SQLITE_ONLY
def test_p_solo_runs_this_process_one_task_at_a_time(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker("-P", "solo")
    ready = worker.wait_for(" ready: pid ")
    assert "INFO/MainProcess]" in ready and "concurrency 1," in ready
    threads = start_worker("-P", "threads", "-c", "7")
    assert "concurrency 7," in threads.wait_for(" ready: pid ")


@SQLITE_ONLY
def test_hostname_expands_celery_abbreviations(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker("-n", "w1@%h")
    assert f"] w1@{socket.gethostname()} ready: pid " in worker.wait_for(" ready: pid ")


@SQLITE_ONLY
@pytest.mark.parametrize("flag", ["-B", "--beat"])
def test_beat_runs_a_scheduler_in_the_worker(
    flag: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(flag, app="periodic:app")
    worker.wait_for(" leads: it sends the periodic tasks")
    worker.wait_for("beat: sending every-second (periodic.noted)", count=2)


@SQLITE_ONLY
def test_every_process_of_a_beat_pool_schedules_and_one_leads(supervise: Any) -> None:
    """-B reaches each process of -P N: they elect one leader among them."""
    pool = supervise("-P", "2", "-B", "-l", "info", app="periodic:app")
    pool.pids_ready(2)
    pool.wait_for("beat: sending every-second (periodic.noted)", count=2)
    assert len([line for line in pool.lines if " leads: it sends" in line]) == 1


def _recycled_pids(basic: Any, tasks: int) -> list[int]:
    sent = [basic.resource_id_async.delay(i) for i in range(tasks)]
    return [result.get(timeout=60)[0] for result in sent]


@SQLITE_ONLY
def test_a_plain_worker_honours_max_tasks_per_child_flag(
    start_worker: Callable[..., WorkerProcess], basic: Any
) -> None:
    worker = start_worker("--max-tasks-per-child", "2", "-c", "1")
    assert len(set(_recycled_pids(basic, 5))) == 3  # 2 + 2 + 1, one process after another
    worker.wait_for("took 2 tasks (worker_max_tasks_per_child)", count=2)


@SQLITE_ONLY
def test_a_plain_worker_honours_the_max_tasks_per_child_setting(
    start_worker: Callable[..., WorkerProcess], basic: Any, tmp_path: Path
) -> None:
    (tmp_path / "recycling.py").write_text(
        "from basic import app\napp.conf.worker_max_tasks_per_child = 2\n"
    )
    worker = start_worker("-c", "1", app="recycling:app")
    assert len(set(_recycled_pids(basic, 4))) == 2
    assert "runs as one process under a supervisor that replaces it" in worker.log()


@SQLITE_ONLY
def test_a_plain_worker_honours_max_memory_per_child(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker("--max-memory-per-child", "1")  # 1 KiB: over it at once
    worker.wait_for("over worker_max_memory_per_child=1: stopping to be replaced", count=2)


def test_status_with_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for url in (f"redis://:secret@127.0.0.1:{port}/0", f"amqp://guest:secret@127.0.0.1:{port}//"):
        out = celeriac("-A", "basic:app", "status", cwd=tmp_path, env={"CELERIAC_BROKER_URL": url})
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert f"127.0.0.1:{port}" in out.stderr and "is unreachable" in out.stderr
        assert "check that it runs and that broker_url points at it" in out.stderr
        assert "secret" not in out.stderr


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], "examples:"),
        (["worker"], "(default: worker_concurrency, 100)"),
        (["worker"], "(default: info for worker and run, warning otherwise)"),
        (["run", "x:y"], "web server port (default: 8000)"),
        (["purge"], "(default: task_default_queue, celery)"),
    ],
)
def test_help_reads_as_documentation_with_defaults(
    command: list[str], expected: str, tmp_path: Path
) -> None:
    out = celeriac(*command, "--help", cwd=tmp_path)
    assert out.returncode == 0
    assert expected in " ".join(out.stdout.split())
    assert "(default: None)" not in out.stdout


@SQLITE_ONLY
def test_ready_line_names_the_absolute_path_of_the_embedded_database(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "sqlite:///relative.db")
    ready = start_worker().wait_for(" ready: pid ")  # run from tmp_path
    assert f"broker sqlite:///{tmp_path / 'relative.db'}" in ready, ready
