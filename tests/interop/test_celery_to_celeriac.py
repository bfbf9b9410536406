"""A real Celery client publishes; a celeriac worker runs the task; Celery reads the result.

The client is ``interop.peers.celery_app`` (real Celery 5.7) in this process; the worker is
``celeriac -A interop.peers.celeriac_app:app worker``, started once for the module and
consuming a pool of queues, one (or two) per test.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest
from celery import states
from celery.exceptions import TaskRevokedError

from interop.harness import InteropRun, WorkerProcess
from interop.peers import settings
from interop.peers.closing import close_celery_app
from interop.peers.errors import InteropError, TransientError
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20


@pytest.fixture(scope="module")
def worker(interop: InteropRun) -> WorkerProcess:
    """The module's celeriac worker, consuming every queue of the pool."""
    return interop.start_celeriac_worker(interop.pool)


@pytest.fixture(scope="module")
def celery(interop: InteropRun, worker: WorkerProcess) -> Iterator[ModuleType]:
    """The Celery peer module, configured for this run, as the client."""
    from interop.peers import celery_app

    celery_app.configure()
    yield celery_app
    celery_app.close()


# -- arguments and results -------------------------------------------------------------------


def test_send_task_delay_and_apply_async_with_args_and_kwargs(
    interop: InteropRun, celery: ModuleType, queue: str
) -> None:
    by_name = celery.app.send_task("interop.add", (2, 3), queue=queue)
    by_kwargs = celery.add.apply_async(kwargs={"x": 4, "y": 5}, queue=queue)
    mixed = celery.add.apply_async((6,), {"y": 7}, queue=queue)
    args = [1, "two", [3, 4.5], {"five": None}, True, "ünïcode ✓"]
    kwargs = {"k": "v", "none": None, "nested": {"a": [1, {"b": 2}]}}
    echoed = celery.echo.apply_async(args, kwargs, queue=queue)

    assert by_name.get(timeout=TIMEOUT) == 5
    assert by_kwargs.get(timeout=TIMEOUT) == 9
    assert mixed.get(timeout=TIMEOUT) == 13
    assert echoed.get(timeout=TIMEOUT) == {"args": args, "kwargs": kwargs}
    assert echoed.state == states.SUCCESS and echoed.successful()

    # celeriac wrote the record where Celery looks: <prefix>celery-task-meta-<id>.
    record = interop.result_record(echoed.id)
    assert record is not None
    assert record["status"] == "SUCCESS"
    assert record["task_id"] == echoed.id
    assert record["result"] == {"args": args, "kwargs": kwargs}
    assert record["date_done"]


def test_delay_goes_to_the_default_queue(celery: ModuleType) -> None:
    """``delay`` with no options: Celery's task_default_queue (this run's, set by the env)."""
    assert celery.add.delay(20, 22).get(timeout=TIMEOUT) == 42
    assert celery.add.delay(x=1, y=2).get(timeout=TIMEOUT) == 3


def test_kombu_json_types_arrive_as_python_objects(celery: ModuleType, queue: str) -> None:
    """kombu's JSON markers ({"__type__": ..., "__value__": ...}) in the body are decoded."""
    values = settings.typed_values()
    described = celery.describe.apply_async(values, queue=queue).get(timeout=TIMEOUT)
    assert described == [[type(v).__name__, repr(v)] for v in values]


def test_kombu_json_types_in_results_read_back_as_python_objects(
    celery: ModuleType, queue: str
) -> None:
    values = celery.typed_values.apply_async(queue=queue).get(timeout=TIMEOUT)
    assert values == settings.typed_values()
    assert [type(v) for v in values] == [type(v) for v in settings.typed_values()]


# -- failures --------------------------------------------------------------------------------


def test_exception_is_rebuilt_by_celery(celery: ModuleType, queue: str) -> None:
    own = celery.fail.apply_async(("it broke", 7), queue=queue)
    with pytest.raises(InteropError) as info:
        own.get(timeout=TIMEOUT)
    assert info.value.args == ("it broke", 7)
    assert own.state == states.FAILURE and own.failed()
    assert "InteropError" in (own.traceback or "")

    builtin = celery.fail_builtin.apply_async(("kaboom",), queue=queue)
    with pytest.raises(ValueError, match="kaboom"):
        builtin.get(timeout=TIMEOUT)


def test_exception_of_a_module_the_client_lacks(celery: ModuleType, queue: str) -> None:
    """Celery makes up a class of the same name when it cannot find the module."""
    assert "interop.peers.worker_only" not in sys.modules
    result = celery.fail_worker_only.apply_async(("secret",), queue=queue)
    with pytest.raises(Exception) as info:
        result.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "WorkerOnlyError"
    assert info.value.args == ("secret",)


# -- retries, countdown, eta, expires ----------------------------------------------------------


def test_retry_with_countdown(
    interop: InteropRun, celery: ModuleType, worker: WorkerProcess, queue: str
) -> None:
    ok = celery.flaky.apply_async((2,), queue=queue)
    assert ok.get(timeout=TIMEOUT) == {"retries": 2}
    worker.wait_for(f"task interop.flaky[{ok.id}] retry 2 in")
    record = interop.result_record(ok.id)
    assert record is not None and record["parent_id"] == ok.id  # as Celery's own worker

    exhausted = celery.flaky.apply_async((5,), queue=queue)  # max_retries=2
    with pytest.raises(TransientError, match="attempt 2"):
        exhausted.get(timeout=TIMEOUT)


def test_countdown(celery: ModuleType, queue: str) -> None:
    sent = time.time()
    result = celery.whoami.apply_async(queue=queue, countdown=1)
    ran = result.get(timeout=TIMEOUT)
    assert ran["ran_at"] >= sent + 1 - 0.05
    assert ran["id"] == result.id


def test_eta(celery: ModuleType, queue: str) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1)
    result = celery.whoami.apply_async(queue=queue, eta=eta)
    ran = result.get(timeout=TIMEOUT)
    assert ran["ran_at"] >= eta.timestamp() - 0.05


def test_already_expired_task_is_revoked_without_running(
    interop: InteropRun, celery: ModuleType, worker: WorkerProcess, queue: str
) -> None:
    name = interop.marker()
    expired = datetime.now(UTC) - timedelta(seconds=30)
    result = celery.record.apply_async((name, "ran"), queue=queue, expires=expired)
    with pytest.raises(TaskRevokedError):  # Celery's own class, from celeriac's record
        result.get(timeout=TIMEOUT)
    assert result.state == states.REVOKED
    worker.wait_for(f"task interop.record[{result.id}] expired at")
    assert not (interop.marks / name).exists()

    later = celery.record.apply_async((name, "ran"), queue=queue, expires=60)
    assert later.get(timeout=TIMEOUT) == "ran"


# -- priorities and queues -------------------------------------------------------------------


def test_priority_higher_first_when_the_worker_starts_after_publishing(
    interop: InteropRun, celery: ModuleType
) -> None:
    """On Redis, Celery's 0 is the most urgent; celeriac sees Celery's p as 9 - p. On
    RabbitMQ both sides number them as AMQP does (higher first, x-max-priority queues)."""
    queue, name = interop.private_queue(), interop.marker()
    if interop.transport == "redis":
        sent = [("low1", 9), ("low2", 9), ("mid", 4), ("high", 0)]
        expected = ["high 9", "mid 5", "low1 0", "low2 0"]
    else:
        sent = [("low1", 0), ("low2", 0), ("mid", 4), ("high", 9)]
        expected = ["high 9", "mid 4", "low1 0", "low2 0"]
    for label, priority in sent:
        celery.record_priority.apply_async((name, label), queue=queue, priority=priority)
    if interop.transport == "redis":
        assert interop.list_lengths(queue) == {0: 1, 3: 1, 6: 0, 9: 2}  # kombu's layout
    else:
        # the order RabbitMQ will deliver them in: priority first
        assert [m["properties"]["priority"] for m in interop.queued(queue)] == [9, 4, 0, 0]
    worker = interop.start_celeriac_worker([queue], "-c", "1", "--prefetch-multiplier", "1")
    try:
        path = interop.marks / name
        lines = wait_until(
            lambda: path.exists() and len(path.read_text().splitlines()) == 4 and path,
            what="4 tasks to run",
        ).read_text()
    finally:
        interop.stop_worker(worker)
    assert lines.splitlines() == expected


def test_custom_queue(interop: InteropRun, celery: ModuleType, queue: str) -> None:
    other = interop.queue()
    ran = celery.whoami.apply_async(queue=other).get(timeout=TIMEOUT)
    assert ran["queue"] == other

    nobody = interop.private_queue()  # no worker consumes it: the message waits there
    waiting = celery.add.apply_async((1, 1), queue=nobody)
    [envelope] = interop.queued(nobody)
    assert envelope["headers"]["id"] == waiting.id
    assert envelope["properties"]["delivery_info"]["routing_key"] == nobody


# -- results ---------------------------------------------------------------------------------


def test_ignore_result_writes_no_key(
    interop: InteropRun, celery: ModuleType, worker: WorkerProcess, queue: str
) -> None:
    name = interop.marker()
    ignored = celery.record.apply_async((name, "ignored"), queue=queue, ignore_result=True)
    worker.wait_for(f"task interop.record[{ignored.id}] succeeded in")
    # celeriac acks after storing (acks_late): once the message is gone, so is any write.
    wait_until(lambda: not interop.held(ignored.id), what="the ack")
    assert (interop.marks / name).read_text() == "ignored\n"
    assert interop.result_record(ignored.id) is None
    assert not interop.results.exists(interop.result_key(ignored.id))

    kept = celery.record.apply_async((name, "kept"), queue=queue)
    assert kept.get(timeout=TIMEOUT) == "kept"
    assert interop.results.exists(interop.result_key(kept.id))


def test_progress_state_is_visible_while_the_task_runs(
    interop: InteropRun, celery: ModuleType, queue: str
) -> None:
    name = interop.marker()
    result = celery.progress_then_wait.apply_async((name,), queue=queue)
    wait_until(lambda: result.state == "PROGRESS", what="PROGRESS")
    assert result.info == {"current": 1, "total": 2}
    assert not result.ready()
    (interop.marks / name).touch()
    assert result.get(timeout=TIMEOUT) == "released"
    assert result.state == states.SUCCESS


def test_celery_reads_celeriac_results_under_a_prefix_without_separator(
    interop: InteropRun,
) -> None:
    """No workers needed: celeriac stores a record, Celery (same settings) reads it."""
    from celery import Celery as CeleryApp

    from celeriac import Celery as CeleriacApp

    prefix = interop.prefix + "nosep"  # under the run's prefix, but no separator at its end
    task_id = str(uuid.uuid4())
    backend = {"global_keyprefix": prefix}
    writer = CeleriacApp("writer", result_backend_transport_options=backend)

    async def store() -> None:
        async with writer.setup():
            await writer.store_state(task_id, "SUCCESS", 42)

    asyncio.run(store())
    reader = CeleryApp("reader", set_as_current=False)
    reader.conf.update(
        broker_url=interop.env()["INTEROP_BROKER_URL"],
        result_backend=interop.env()["INTEROP_RESULT_BACKEND"],
        result_backend_transport_options=backend,
    )
    try:
        assert reader.AsyncResult(task_id).state == states.SUCCESS
    finally:
        close_celery_app(reader)
