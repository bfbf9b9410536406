"""Events across the two, on Redis and RabbitMQ: real Celery's ``EventReceiver`` (what
Flower and ``celery events`` use) hears a celeriac worker started with ``-E`` (online,
heartbeats, its tasks, offline) and folds it into Celery's own state; celeriac's
``EventReceiver`` hears a real Celery worker's task events (batched as ``task.multi``) and
the heartbeat it sends when asked by the ``heartbeat`` command.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from celeriac.events import EventReceiver, State
from interop.harness import InteropRun, node_of
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20
PROBE = "interop-probe"


class CeleryEvents:
    """Celery's ``EventReceiver`` capturing every event in a thread, into a list and into
    Celery's ``State``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.connection = app.connection_for_read()
        self.state = app.events.State()
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.receiver = app.events.Receiver(self.connection, handlers={"*": self._on_event})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append(dict(event))
            self.state.event(event)

    def _run(self) -> None:
        try:
            self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        """Start capturing; returns once an event sent now is heard (a probe of our own)."""
        self.thread.start()
        dispatcher = self.app.events.Dispatcher(self.app.connection_for_write(), enabled=True)

        def heard_probe() -> bool:
            assert self.error is None, self.error
            dispatcher.send(PROBE)
            return bool(self.of(PROBE))

        try:
            wait_until(heard_probe, TIMEOUT, "Celery's receiver to hear a probe")
        finally:
            dispatcher.close()
            dispatcher.connection.release()

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(TIMEOUT)
        self.connection.release()

    def of(self, type: str, **fields: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [
                event
                for event in self.seen
                if event["type"] == type and all(event.get(k) == v for k, v in fields.items())
            ]

    def types_of(self, task_id: str) -> list[str]:
        with self.lock:
            return [event["type"] for event in self.seen if event.get("uuid") == task_id]


@pytest.fixture(scope="module")
def celery(interop: InteropRun) -> Iterator[ModuleType]:
    """The Celery peer, as the client."""
    from interop.peers import celery_app

    celery_app.configure()
    yield celery_app
    celery_app.close()


def test_celerys_receiver_hears_a_celeriac_worker(interop: InteropRun, celery: ModuleType) -> None:
    watcher = CeleryEvents(celery.app)
    watcher.start()
    try:
        queue = interop.private_queue()
        worker = interop.start_celeriac_worker([queue], "-E", "--heartbeat-interval", "0.5")
        node = node_of(worker)
        result = celery.app.send_task("interop.add", (2, 3), queue=queue)
        assert result.get(timeout=TIMEOUT) == 5
        wait_until(lambda: watcher.of("task-succeeded", uuid=result.id), TIMEOUT, "task-succeeded")
        wait_until(
            lambda: len(watcher.of("worker-heartbeat", hostname=node)) >= 2,
            TIMEOUT,
            "two heartbeats",
        )
        with watcher.lock:
            celery_worker = watcher.state.workers[node]
            celery_task = watcher.state.tasks[result.id]
            alive = celery_worker.alive
            task_view = (celery_task.state, celery_task.name, celery_task.result)
            task_worker = celery_task.worker.hostname
        interop.stop_worker(worker)
        offline = wait_until(
            lambda: watcher.of("worker-offline", hostname=node), TIMEOUT, "worker-offline"
        )
    finally:
        watcher.stop()
    (online,) = watcher.of("worker-online", hostname=node)
    assert online["sw_ident"] == "py-celeriac" and online["freq"] == 0.5
    beat = watcher.of("worker-heartbeat", hostname=node)[0]
    assert isinstance(beat["loadavg"], list) and len(beat["loadavg"]) == 3
    assert watcher.types_of(result.id) == ["task-received", "task-started", "task-succeeded"]
    (received,) = watcher.of("task-received", uuid=result.id)
    assert (received["name"], received["args"], received["kwargs"]) == (
        "interop.add",
        "(2, 3)",
        "{}",
    )
    assert (received["hostname"], received["root_id"]) == (node, result.id)
    # Celery's own state (Flower's) takes them: the worker alive, the task done.
    assert alive
    assert task_view == ("SUCCESS", "interop.add", "5")
    assert task_worker == node
    assert offline[0]["processed"] == 1


def test_celeriacs_receiver_hears_a_celery_worker(interop: InteropRun) -> None:
    from interop.peers import celeriac_app

    celeriac_app.configure()
    app = celeriac_app.app

    async def scenario() -> tuple[State, list[dict[str, Any]], str, str]:
        state = State()
        seen: list[dict[str, Any]] = []

        async with app.setup(), EventReceiver(app) as receiver:

            async def read_until(done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
                async with asyncio.timeout(timeout):
                    while not done():
                        event = await anext(receiver)
                        seen.append(event)
                        state.event(event)

            queue = interop.private_queue()
            worker = await asyncio.to_thread(interop.start_celery_worker, [queue], "-E")
            node = node_of(worker)
            result = app.send_task("interop.add", (4, 5), queue=queue)
            assert await result.get(timeout=TIMEOUT) == 9

            def done() -> bool:
                task = state.tasks.get(result.id)
                return task is not None and task.state == "SUCCESS"

            await read_until(done)
            # The harness runs Celery --without-heartbeat: a heartbeat comes only when asked.
            async with asyncio.timeout(TIMEOUT):
                while node not in state.workers or state.workers[node].freq != 5:
                    await app.control.broadcast("heartbeat", destination=[node])
                    try:
                        await read_until(
                            lambda: node in state.workers and state.workers[node].freq == 5, 1.0
                        )
                    except TimeoutError:
                        continue
        await asyncio.to_thread(interop.stop_worker, worker)
        return state, seen, node, result.id

    state, seen, node, task_id = asyncio.run(scenario())
    task = state.tasks[task_id]
    assert (task.name, task.args, task.kwargs, task.result) == ("interop.add", "(4, 5)", "{}", "9")
    assert task.worker == node and isinstance(task.runtime, float)
    assert [e["type"] for e in seen if e.get("uuid") == task_id] == [
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert all("local_received" in e for e in seen)
    worker = state.workers[node]
    assert worker.sw_ident == "py-celery" and worker.alive()


def test_celerys_receiver_hears_task_sent_from_a_celeriac_client(
    interop: InteropRun, celery: ModuleType
) -> None:
    from interop.peers import celeriac_app

    celeriac_app.configure()
    app = celeriac_app.app
    app.close()  # the setting is read when the connection opens
    app.conf.task_send_sent_event = True
    watcher = CeleryEvents(celery.app)
    watcher.start()
    try:
        queue = interop.private_queue()
        result = app.send_task("interop.add", (7, 8), queue=queue)
        sent = wait_until(lambda: watcher.of("task-sent", uuid=result.id), TIMEOUT, "task-sent")
        with watcher.lock:
            task = watcher.state.tasks[result.id]
            view = (task.state, task.name, task.args, task.kwargs)
    finally:
        watcher.stop()
        app.conf.task_send_sent_event = False
        app.close()
    assert (sent[0]["queue"], sent[0]["routing_key"], sent[0]["exchange"]) == (queue, queue, "")
    assert sent[0]["hostname"].startswith("gen")
    assert view == ("PENDING", "interop.add", "(7, 8)", "{}")
