"""Revokes across the two, on Redis and RabbitMQ: a real Celery client's revoke (a bare id,
cast) is honoured by a celeriac worker, its ``terminate`` stops a running celeriac task, and
celeriac's revoke is honoured by a real Celery worker; each side reads the other's REVOKED
record as its own ``TaskRevokedError``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest
from celery.exceptions import TaskRevokedError as CeleryRevoked

from celeriac.errors import TaskRevokedError
from interop.harness import InteropRun, WorkerProcess, node_of
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20


@pytest.fixture(scope="module")
def celeriac_worker(interop: InteropRun) -> WorkerProcess:
    return interop.start_celeriac_worker(interop.pool[:1])


@pytest.fixture(scope="module")
def celery_worker(interop: InteropRun) -> WorkerProcess:
    return interop.start_celery_worker(interop.pool[1:2])


@pytest.fixture(scope="module")
def celery(
    interop: InteropRun, celeriac_worker: WorkerProcess, celery_worker: WorkerProcess
) -> Iterator[ModuleType]:
    from interop.peers import celery_app

    celery_app.configure()
    for node in (node_of(celeriac_worker), node_of(celery_worker)):
        wait_until(
            lambda node=node: celery_app.app.control.inspect([node], timeout=0.5).ping(),
            TIMEOUT,
            f"{node} to answer",
        )
    yield celery_app
    celery_app.close()


@pytest.fixture(scope="module")
def celeriac(celery: ModuleType) -> Iterator[ModuleType]:
    from interop.peers import celeriac_app

    celeriac_app.configure()
    yield celeriac_app
    celeriac_app.app.close()


def test_a_celery_clients_revoke_is_honoured_by_a_celeriac_worker(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    task_id = str(uuid.uuid4())
    celery.app.control.revoke(task_id)  # a cast; the id bare, as app.control sends it
    node = node_of(celeriac_worker)
    wait_until(
        lambda: task_id in celery.app.control.inspect([node], timeout=1).revoked()[node],
        TIMEOUT,
        "the celeriac worker to list the revoke",
    )
    result = celery.app.send_task("interop.add", (1, 2), task_id=task_id, queue=interop.pool[0])
    with pytest.raises(CeleryRevoked):
        result.get(timeout=TIMEOUT)
    assert result.state == "REVOKED"


def test_a_celery_clients_terminate_stops_a_running_celeriac_task(
    interop: InteropRun, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    name = interop.marker()
    result = celery.app.send_task("interop.wait_for_mark", (name,), queue=interop.pool[0])
    node = node_of(celeriac_worker)
    inspect = celery.app.control.inspect([node], timeout=1)
    wait_until(lambda: inspect.active()[node], TIMEOUT, "the task to run")
    replies = celery.app.control.revoke(
        result.id, terminate=True, signal="SIGKILL", reply=True, destination=[node], timeout=5
    )
    assert replies == [{node: {"ok": f"terminate: {result.id}"}}]
    with pytest.raises(CeleryRevoked):
        result.get(timeout=TIMEOUT)
    celeriac_worker.wait_for(f"[{result.id}] terminated (revoked)")
    (interop.marks / name).touch()  # the sync task's thread ends, if it is still looking


def test_celeriacs_revoke_is_honoured_by_a_celery_worker(
    interop: InteropRun, celeriac: ModuleType, celery_worker: WorkerProcess
) -> None:
    task_id = str(uuid.uuid4())
    replies = celeriac.app.control.revoke(
        task_id, destination=[node_of(celery_worker)], reply=True, timeout=5
    )
    assert replies == [
        {node_of(celery_worker): {"ok": f"tasks {{'{task_id}'}} flagged as revoked"}}
    ]
    result = celeriac.add.apply_async((1, 2), task_id=task_id, queue=interop.pool[1])
    with pytest.raises(TaskRevokedError):
        result.get(timeout=TIMEOUT)
    assert result.state == "REVOKED"
