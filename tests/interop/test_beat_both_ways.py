"""Periodic tasks across the two: a real Celery worker runs what ``celeriac beat`` sends, and a
celeriac worker runs what ``celery beat`` sends, on Redis and RabbitMQ (results in Redis)."""

from __future__ import annotations

import re
import sys

import pytest

from interop.harness import InteropRun, WorkerProcess
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 30
SUCCEEDED = re.compile(r"[Tt]ask interop\.add\[(?P<id>[0-9a-f-]+)\] succeeded in")


def runs(worker: WorkerProcess, count: int) -> list[str]:
    """The ids of the first ``count`` runs of interop.add the worker logged as succeeded."""

    def succeeded() -> list[str] | None:
        ids = [m["id"] for line in list(worker.lines) if (m := SUCCEEDED.search(line))]
        return ids if len(ids) >= count else None

    found: list[str] = wait_until(succeeded, TIMEOUT, f"{count} periodic runs")
    return found[:count]


def test_a_celery_worker_runs_what_celeriac_beat_sends(
    interop: InteropRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = interop.private_queue()
    monkeypatch.setenv("INTEROP_BEAT_QUEUE", queue)
    worker = interop.start_celery_worker([queue], "-P", "solo")
    argv = [sys.executable, "-m", "celeriac.cli", "-A", "interop.peers.celeriac_beat:app"]
    beat = interop._spawn([*argv, "beat", "-l", "info"], " leads: it sends")
    ids = runs(worker, 2)
    for task_id in ids:
        record = interop.result_record(task_id)
        assert record is not None and (record["status"], record["result"]) == ("SUCCESS", 5)
    assert len(set(ids)) == 2
    interop.stop_worker(beat)
    interop.stop_worker(worker)


def test_a_celeriac_worker_runs_what_celery_beat_sends(
    interop: InteropRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = interop.private_queue()
    monkeypatch.setenv("INTEROP_BEAT_QUEUE", queue)
    worker = interop.start_celeriac_worker([queue])
    schedule_file = interop.tmp / f"celerybeat-schedule-{queue}"
    argv = [sys.executable, "-m", "celery", "-A", "interop.peers.celery_beat", "beat"]
    argv += ["-l", "info", "-s", str(schedule_file), "--max-interval", "1"]
    beat = interop._spawn(argv, "beat: Starting...")
    ids = runs(worker, 2)
    for task_id in ids:
        record = interop.result_record(task_id)
        assert record is not None and (record["status"], record["result"]) == ("SUCCESS", 5)
    beat.kill()
    interop.stop_worker(worker)
