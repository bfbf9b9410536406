"""A celeriac client publishes; a real Celery worker runs the task; celeriac reads the result.

The client is ``interop.peers.celeriac_app`` (its sync API, and the async one in one test) in
this process; the worker is ``celery -A interop.peers.celery_app worker`` (threads pool),
started once for the module and consuming a pool of queues, one (or two) per test.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest

from celeriac import states
from celeriac.errors import RemoteTaskError, TaskRevokedError
from interop.harness import InteropRun, WorkerProcess
from interop.peers import settings
from interop.peers.closing import close_celery_app
from interop.peers.errors import InteropError, TransientError
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20
#: redis-py 8 deprecates ``setex()``, which Celery's own result backend calls (in this process
#: when a test stores a record through Celery).
SETEX_DEPRECATED = "ignore:Call to deprecated setex:DeprecationWarning"


@pytest.fixture(scope="module")
def worker(interop: InteropRun) -> WorkerProcess:
    """The module's Celery worker, consuming every queue of the pool."""
    return interop.start_celery_worker(interop.pool, "--pool=threads", "-c", "4")


@pytest.fixture(scope="module")
def celeriac(interop: InteropRun, worker: WorkerProcess) -> Iterator[ModuleType]:
    """The celeriac peer module, configured for this run, as the (sync) client."""
    from interop.peers import celeriac_app

    celeriac_app.configure()
    yield celeriac_app
    celeriac_app.app.close()


def _fresh_celery_client(interop: InteropRun) -> Any:
    """A real Celery app on this run's settings, for ``send_task`` by name."""
    from celery import Celery

    env = interop.env()
    app = Celery("interop-extra-client", set_as_current=False)
    app.conf.update(
        broker_url=env["INTEROP_BROKER_URL"],
        result_backend=env["INTEROP_RESULT_BACKEND"],
        broker_transport_options=settings.broker_transport_options(),
        result_backend_transport_options={"global_keyprefix": interop.prefix},
        task_queue_max_priority=settings.max_priority(),
        broker_connection_retry_on_startup=True,
    )
    return app


# -- arguments and results -------------------------------------------------------------------


def test_send_task_delay_and_apply_async_with_args_and_kwargs(
    interop: InteropRun, celeriac: ModuleType, queue: str
) -> None:
    by_name = celeriac.app.send_task("interop.add", (2, 3), queue=queue)
    by_kwargs = celeriac.add.apply_async(kwargs={"x": 4, "y": 5}, queue=queue)
    mixed = celeriac.add.apply_async((6,), {"y": 7}, queue=queue)
    args = [1, "two", [3, 4.5], {"five": None}, True, "ünïcode ✓"]
    kwargs = {"k": "v", "none": None, "nested": {"a": [1, {"b": 2}]}}
    echoed = celeriac.echo.apply_async(args, kwargs, queue=queue)

    assert by_name.get(timeout=TIMEOUT) == 5
    assert by_kwargs.get(timeout=TIMEOUT) == 9
    assert mixed.get(timeout=TIMEOUT) == 13
    assert echoed.get(timeout=TIMEOUT) == {"args": args, "kwargs": kwargs}
    assert echoed.state == states.SUCCESS and echoed.successful()

    # Celery wrote the record where celeriac looks: <prefix>celery-task-meta-<id>.
    record = interop.result_record(echoed.id)
    assert record is not None
    assert record["status"] == "SUCCESS"
    assert record["task_id"] == echoed.id
    assert echoed.date_done is not None and echoed.date_done.tzinfo is not None


def test_delay_goes_to_the_default_queue(celeriac: ModuleType) -> None:
    """``delay`` with no options: celeriac's task_default_queue (this run's, set by the env)."""
    assert celeriac.add.delay(20, 22).get(timeout=TIMEOUT) == 42
    assert celeriac.add.delay(x=1, y=2).get(timeout=TIMEOUT) == 3


async def test_async_client(celeriac: ModuleType, queue: str) -> None:
    app = celeriac.app
    async with app.setup():
        first = await celeriac.add.apply_async((2, 3), queue=queue)
        second = await app.send_task("interop.echo", ["x"], {"y": 1}, queue=queue)
        assert await first.get(timeout=TIMEOUT) == 5
        assert await second.get(timeout=TIMEOUT) == {"args": ["x"], "kwargs": {"y": 1}}
        assert await first.successful()


def test_a_batch_from_send_many_runs_on_celery(celeriac: ModuleType, queue: str) -> None:
    """delay_many's messages (on Redis, many in one LPUSH, written from one template) are
    what Celery's worker reads: each runs with its own arguments and id."""
    calls: list[Any] = [(i, i) for i in range(250)]
    calls.append({"x": 1, "y": 1000})
    results = celeriac.add.apply_many(calls, queue=queue)
    by_name = celeriac.app.send_many("interop.echo", [["a"], {"k": "v"}], queue=queue)
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(250)] + [1001]
    assert len({r.id for r in results}) == 251
    assert by_name[0].get(timeout=TIMEOUT) == {"args": ["a"], "kwargs": {}}
    assert by_name[1].get(timeout=TIMEOUT) == {"args": [], "kwargs": {"k": "v"}}


def test_kombu_json_types_arrive_as_python_objects(celeriac: ModuleType, queue: str) -> None:
    """celeriac writes kombu's JSON markers, so Celery's task gets the Python objects."""
    values = settings.typed_values()
    described = celeriac.describe.apply_async(values, queue=queue).get(timeout=TIMEOUT)
    assert described == [[type(v).__name__, repr(v)] for v in values]


def test_kombu_json_types_in_results_read_back_as_python_objects(
    celeriac: ModuleType, queue: str
) -> None:
    values = celeriac.typed_values.apply_async(queue=queue).get(timeout=TIMEOUT)
    assert values == settings.typed_values()
    assert [type(v) for v in values] == [type(v) for v in settings.typed_values()]


# -- failures --------------------------------------------------------------------------------


def test_exception_is_rebuilt_by_celeriac(celeriac: ModuleType, queue: str) -> None:
    own = celeriac.fail.apply_async(("it broke", 7), queue=queue)
    with pytest.raises(InteropError) as info:
        own.get(timeout=TIMEOUT)
    assert info.value.args == ("it broke", 7)
    assert "Remote traceback" in "".join(getattr(info.value, "__notes__", []))
    assert own.state == states.FAILURE and own.failed()
    assert "InteropError" in (own.traceback or "")

    builtin = celeriac.fail_builtin.apply_async(("kaboom",), queue=queue)
    with pytest.raises(ValueError, match="kaboom"):
        builtin.get(timeout=TIMEOUT)


def test_exception_of_a_module_the_client_lacks(celeriac: ModuleType, queue: str) -> None:
    """celeriac never imports a module for a result: RemoteTaskError with what was stored."""
    assert "interop.peers.worker_only" not in sys.modules
    result = celeriac.fail_worker_only.apply_async(("secret",), queue=queue)
    with pytest.raises(RemoteTaskError) as info:
        result.get(timeout=TIMEOUT)
    assert info.value.exc_type == "WorkerOnlyError"
    assert info.value.exc_module == "interop.peers.worker_only"
    assert info.value.exc_args == ["secret"]
    assert "WorkerOnlyError" in (info.value.remote_traceback or "")
    assert "interop.peers.worker_only" not in sys.modules


# -- retries, countdown, eta, expires ----------------------------------------------------------


def test_retry_with_countdown(
    interop: InteropRun, celeriac: ModuleType, worker: WorkerProcess, queue: str
) -> None:
    ok = celeriac.flaky.apply_async((2,), queue=queue)
    assert ok.get(timeout=TIMEOUT) == {"retries": 2}
    worker.wait_for(f"Task interop.flaky[{ok.id}] retry: Retry in", count=2)
    record = interop.result_record(ok.id)
    assert record is not None and record["parent_id"] == ok.id

    exhausted = celeriac.flaky.apply_async((5,), queue=queue)  # max_retries=2
    with pytest.raises(TransientError, match="attempt 2"):
        exhausted.get(timeout=TIMEOUT)


def test_countdown(celeriac: ModuleType, queue: str) -> None:
    sent = time.time()
    result = celeriac.whoami.apply_async(queue=queue, countdown=1)
    ran = result.get(timeout=TIMEOUT)
    assert ran["ran_at"] >= sent + 1 - 0.05
    assert ran["id"] == result.id


def test_eta(celeriac: ModuleType, queue: str) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1)
    result = celeriac.whoami.apply_async(queue=queue, eta=eta)
    ran = result.get(timeout=TIMEOUT)
    assert ran["ran_at"] >= eta.timestamp() - 0.05


def test_already_expired_task_is_revoked_without_running(
    interop: InteropRun, celeriac: ModuleType, worker: WorkerProcess, queue: str
) -> None:
    name = interop.marker()
    expired = datetime.now(UTC) - timedelta(seconds=30)
    result = celeriac.record.apply_async((name, "ran"), queue=queue, expires=expired)
    with pytest.raises(TaskRevokedError):  # Celery's record read back as celeriac's class
        result.get(timeout=TIMEOUT)
    assert result.state == states.REVOKED
    worker.wait_for(f"Discarding revoked task: interop.record[{result.id}]")
    assert not (interop.marks / name).exists()

    later = celeriac.record.apply_async((name, "ran"), queue=queue, expires=60)
    assert later.get(timeout=TIMEOUT) == "ran"


# -- priorities and queues -------------------------------------------------------------------


def test_priority_higher_first_when_the_worker_starts_after_publishing(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    """celeriac's 9 (most urgent) is Celery's 0 on Redis; Celery sees celeriac's p as 9 - p.
    On RabbitMQ both number them as AMQP does (higher first, queues with x-max-priority)."""
    queue, name = interop.private_queue(), interop.marker()
    for label, priority in [("low1", 0), ("low2", 0), ("mid", 5), ("high", 9)]:
        celeriac.record_priority.apply_async((name, label), queue=queue, priority=priority)
    if interop.transport == "redis":
        assert interop.list_lengths(queue) == {0: 1, 3: 1, 6: 0, 9: 2}  # what kombu writes
        expected = ["high 0", "mid 4", "low1 9", "low2 9"]
    else:
        # the order RabbitMQ will deliver them in: priority first
        assert [m["properties"]["priority"] for m in interop.queued(queue)] == [9, 5, 0, 0]
        expected = ["high 9", "mid 5", "low1 0", "low2 0"]
    worker = interop.start_celery_worker([queue], "--pool=solo", "--prefetch-multiplier=1")
    try:
        path = interop.marks / name
        lines = wait_until(
            lambda: path.exists() and len(path.read_text().splitlines()) == 4 and path,
            what="4 tasks to run",
        ).read_text()
    finally:
        interop.stop_worker(worker)
    assert lines.splitlines() == expected


def test_celeriac_priority_9_is_celerys_default(interop: InteropRun, celeriac: ModuleType) -> None:
    """celeriac's default (0) is its least urgent level, Celery-on-Redis's (0) its most
    urgent: clients sharing queues with Celery producers set task_default_priority=9
    (docs/celery-compatibility.md), and then both producers' plain messages run FIFO. On
    RabbitMQ both defaults are AMQP's 0 already."""
    queue, name = interop.private_queue(), interop.marker()
    default = 9 if interop.transport == "redis" else 0
    celeriac.record_priority.apply_async((name, "celeriac"), queue=queue, priority=default)
    client = _fresh_celery_client(interop)
    try:
        client.send_task("interop.record_priority", (name, "celery"), queue=queue)
    finally:
        close_celery_app(client)
    worker = interop.start_celery_worker([queue], "--pool=solo", "--prefetch-multiplier=1")
    try:
        path = interop.marks / name
        lines = wait_until(
            lambda: path.exists() and len(path.read_text().splitlines()) == 2 and path,
            what="2 tasks to run",
        ).read_text()
    finally:
        interop.stop_worker(worker)
    assert [line.split()[0] for line in lines.splitlines()] == ["celeriac", "celery"]  # FIFO


def test_custom_queue(interop: InteropRun, celeriac: ModuleType, queue: str) -> None:
    other = interop.queue()
    ran = celeriac.whoami.apply_async(queue=other, priority=9).get(timeout=TIMEOUT)
    assert ran["queue"] == other
    # celeriac's 9, as Celery's Redis transport numbers it (0), or as AMQP does (9)
    assert ran["priority"] == (0 if interop.transport == "redis" else 9)

    nobody = interop.private_queue()  # no worker consumes it: the message waits there
    waiting = celeriac.add.apply_async((1, 1), queue=nobody)
    [envelope] = interop.queued(nobody)
    assert envelope["headers"]["id"] == waiting.id
    assert envelope["properties"]["delivery_info"]["routing_key"] == nobody
    if interop.transport == "redis":  # the queue is declared where a Celery worker looks
        assert interop.broker.sismember(
            f"{interop.prefix}_kombu.binding.{nobody}", f"{nobody}\x06\x16\x06\x16{nobody}"
        )


# -- results ---------------------------------------------------------------------------------


def test_ignore_result_writes_no_key(
    interop: InteropRun, celeriac: ModuleType, worker: WorkerProcess, queue: str
) -> None:
    name = interop.marker()
    ignored = celeriac.record.apply_async((name, "ignored"), queue=queue, ignore_result=True)
    # Celery logs success after the (skipped) store, so the log line is the end of it.
    worker.wait_for(f"Task interop.record[{ignored.id}] succeeded in")
    assert (interop.marks / name).read_text() == "ignored\n"
    assert interop.result_record(ignored.id) is None
    assert not interop.results.exists(interop.result_key(ignored.id))

    kept = celeriac.record.apply_async((name, "kept"), queue=queue)
    assert kept.get(timeout=TIMEOUT) == "kept"
    assert interop.results.exists(interop.result_key(kept.id))


def test_progress_state_is_visible_while_the_task_runs(
    interop: InteropRun, celeriac: ModuleType, queue: str
) -> None:
    name = interop.marker()
    result = celeriac.progress_then_wait.apply_async((name,), queue=queue)
    wait_until(lambda: result.state == "PROGRESS", what="PROGRESS")
    assert result.info == {"current": 1, "total": 2}
    assert not result.ready()
    (interop.marks / name).touch()
    assert result.get(timeout=TIMEOUT) == "released"
    assert result.state == states.SUCCESS


@pytest.mark.filterwarnings(SETEX_DEPRECATED)
def test_celeriac_reads_celery_results_under_a_prefix_without_separator(
    interop: InteropRun,
) -> None:
    """No workers needed: Celery stores a record, celeriac (same settings) reads it."""
    from celery import Celery as CeleryApp

    from celeriac import Celery as CeleriacApp

    prefix = interop.prefix + "nosep"  # under the run's prefix, but no separator at its end
    task_id = str(uuid.uuid4())
    backend = {"global_keyprefix": prefix}
    writer = CeleryApp("writer", set_as_current=False)
    writer.conf.update(
        broker_url=interop.env()["INTEROP_BROKER_URL"],
        result_backend=interop.env()["INTEROP_RESULT_BACKEND"],
        result_backend_transport_options=backend,
    )
    try:
        writer.backend.mark_as_done(task_id, 42)
    finally:
        close_celery_app(writer)
    reader = CeleriacApp("reader", result_backend_transport_options=backend)
    try:
        assert reader.AsyncResult(task_id).state == states.SUCCESS
    finally:
        close_celery_app(reader)
