"""Revokes that last, on every broker a worker process reaches (SQLite; Redis; RabbitMQ with
results in Redis): a revoke sent before any worker started, and one a worker heard before it
restarted, are honoured by the worker that runs next; ``terminate`` stops a running async
task at once. Celery loses both of the first two (revoked ids live in worker memory only).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.errors import TaskRevokedError
from services import wait_until

from .conftest import WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


def answers(basic: Any, node: str) -> bool:
    return bool(basic.app.control.inspect([node], timeout=0.5).ping())


def test_a_revoke_sent_before_any_worker_started_is_honoured(
    start_worker: Callable[..., WorkerProcess], basic: Any
) -> None:
    task_id = str(uuid.uuid4())
    basic.app.control.revoke(task_id)  # no worker hears it: only the store keeps it
    result = basic.add.apply_async((1, 2), task_id=task_id)
    worker = start_worker()
    with pytest.raises(TaskRevokedError, match="revoked"):
        result.get(timeout=TIMEOUT)
    assert result.state == states.REVOKED
    worker.wait_for(f"[{task_id}] is revoked: not run")


def test_a_revoke_heard_before_a_restart_is_honoured_after_it(
    start_worker: Callable[..., WorkerProcess], basic: Any
) -> None:
    first = start_worker("-n", "first@revoke")
    wait_until(lambda: answers(basic, "first@revoke"), TIMEOUT, "the first worker to answer")
    task_id = str(uuid.uuid4())
    # As a Celery client revokes: a broadcast only, which the worker records itself.
    replies = basic.app.control.broadcast(
        "revoke", {"task_id": task_id}, destination=["first@revoke"], reply=True, timeout=5
    )
    assert replies == [{"first@revoke": {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}]
    first.stop()
    result = basic.add.apply_async((1, 2), task_id=task_id)
    second = start_worker("-n", "second@revoke")
    with pytest.raises(TaskRevokedError):
        result.get(timeout=TIMEOUT)
    second.wait_for(f"[{task_id}] is revoked: not run")
    assert (
        task_id
        in basic.app.control.inspect(["second@revoke"], timeout=5).revoked()["second@revoke"]
    )


def test_terminate_stops_a_running_async_task_at_once(
    start_worker: Callable[..., WorkerProcess], basic: Any, marks: Path
) -> None:
    worker = start_worker("-n", "term@revoke")
    wait_until(lambda: answers(basic, "term@revoke"), TIMEOUT, "the worker to answer")
    name = f"slow-{uuid.uuid4().hex}"
    result = basic.slow.delay(60, name)
    wait_until(lambda: (marks / f"{name}.start").exists(), TIMEOUT, "the task to start")
    began = time.perf_counter()
    result.revoke(terminate=True)  # a cast, as Celery's default
    with pytest.raises(TaskRevokedError, match="terminated"):
        result.get(timeout=TIMEOUT)
    stopped_in = time.perf_counter() - began
    worker.wait_for(f"[{result.id}] terminated (revoked)")
    assert not (marks / f"{name}.end").exists()
    # From the revoke call to the REVOKED record read back: the broadcast, the
    # cancellation, the store and the client's read.
    print(f"\nterminate: REVOKED read back {stopped_in * 1000:.0f} ms after the revoke call")
    assert basic.add.delay(2, 2).get(timeout=TIMEOUT) == 4  # the worker goes on
