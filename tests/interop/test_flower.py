"""Real Flower 2.2 watching and driving a celeriac worker through its HTTP API, on Redis and
on RabbitMQ.

Flower keeps two views of the workers: one built from the events on ``celeryev`` (the
celeriac worker sends them; ``-E`` adds its task events) and one from remote-control
``inspect`` replies, which every control button needs (an unknown worker is a 404 there).
The module starts one Flower (``celery -A interop.peers.celery_app flower``, the API opened
with ``FLOWER_UNAUTHENTICATED_API``) and one celeriac worker with ``-E``; the shutdown test
stops a private worker of its own.

Flower endpoints checked:

* events view: ``GET /workers?json=1``, ``GET /api/workers?status=1``, ``GET /api/tasks``,
  ``GET /api/task/info/<id>`` (SUCCESS with result and runtime, FAILURE with the exception,
  STARTED then REVOKED);
* inspect view: ``GET /api/workers?refresh=1``, ``GET /api/workers?workername=<node>``
  (stats, registered, active_queues, conf, active, reserved, scheduled, revoked),
  ``GET /worker/<node>`` (the worker page);
* control: ``POST /api/worker/pool/grow/<node>``, ``POST /api/worker/pool/shrink/<node>``,
  ``POST /api/worker/queue/add-consumer/<node>``, ``POST
  /api/worker/queue/cancel-consumer/<node>``, ``POST /api/task/revoke/<id>?terminate=true``,
  ``POST /api/task/timeout/<task>``, ``POST /api/task/rate-limit/<task>`` (shown by the
  inspect view's ``registered``), ``POST /api/worker/pool/autoscale/<node>``, ``POST
  /api/worker/pool/restart/<node>`` (the last two answered with the worker's error text),
  ``POST /api/worker/shutdown/<node>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from interop.harness import CELERY_APP, TESTS, InteropRun, WorkerProcess, node_of
from services import free_port, wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20
#: Flower's wait for inspect replies, in ms (its default is 1000): without a destination
#: an inspect waits this long for every method of a refresh.
INSPECT_TIMEOUT_MS = 2000


class Flower:
    """A Flower process of the module's own and an HTTP client of its API."""

    def __init__(self, interop: InteropRun) -> None:
        self.port = free_port()
        env = dict(os.environ, **interop.env())
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        self.log_path = interop.tmp / "flower.log"
        self.log_file = self.log_path.open("wb")
        argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "flower"]
        argv += [f"--port={self.port}", "--address=127.0.0.1"]
        argv += [f"--inspect_timeout={INSPECT_TIMEOUT_MS}"]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=interop.tmp
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=TIMEOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def answers(self) -> bool:
        assert self.proc.poll() is None, f"Flower exited:\n{self.log()}"
        try:
            return self.http.get("/healthcheck").status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def json(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, (response.status_code, response.text)
        return response.json()

    def post(self, path: str, **data: Any) -> httpx.Response:
        return self.http.post(path, data=data)

    def inspected(self, node: str) -> dict[str, Any]:
        """The inspect view of ``node`` after a fresh inspection of it alone."""
        workers = self.json("/api/workers", workername=node, refresh=1)
        found: dict[str, Any] = workers[node]
        return found

    def task(self, task_id: str) -> dict[str, Any] | None:
        response = self.get(f"/api/task/info/{task_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, (response.status_code, response.text)
        info: dict[str, Any] = response.json()
        return info

    def task_in(self, task_id: str, state: str) -> dict[str, Any] | None:
        info = self.task(task_id)
        return info if info is not None and info["state"] == state else None

    def status(self) -> dict[str, bool]:
        found: dict[str, bool] = self.json("/api/workers", status=1)
        return found

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.log_file.close()


@pytest.fixture(scope="module")
def celeriac_worker(interop: InteropRun) -> WorkerProcess:
    return interop.start_celeriac_worker(interop.pool[:2], "-E")


@pytest.fixture(scope="module")
def flower(
    interop: InteropRun, celeriac_worker: WorkerProcess, celery: ModuleType
) -> Iterator[Flower]:
    """Flower, once it answers HTTP, hears the worker's events and has inspected it."""
    flower = Flower(interop)
    try:
        wait_until(flower.answers, TIMEOUT, "Flower to answer HTTP")
        node = node_of(celeriac_worker)
        wait_until(lambda: flower.status().get(node), TIMEOUT, "Flower to hear the worker")
        wait_until(
            lambda: flower.get("/api/workers", workername=node, refresh=1).status_code == 200,
            TIMEOUT,
            "Flower to inspect the worker",
        )
        yield flower
    except BaseException:
        print(flower.log())
        raise
    finally:
        flower.close()


# -- the events view ---------------------------------------------------------------------


def test_flower_lists_the_celeriac_worker_online(
    flower: Flower, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    assert flower.status()[node] is True
    # Heartbeats come every 2 s: wait for a second one to be counted.
    rows = wait_until(
        lambda: [
            row
            for row in flower.json("/workers", json=1)["data"]
            if row["hostname"] == node and len(row["heartbeats"]) >= 2
        ],
        TIMEOUT,
        "Flower to count two heartbeats",
    )
    (row,) = rows
    assert row["status"] is True
    assert row["pid"] == celeriac_worker.proc.pid
    assert row["sw_ident"] == "py-celeriac" and row["freq"] > 0
    # Flower counts the events it heard by type (it started after the worker came online).
    assert row["worker-heartbeat"] >= 2
    assert isinstance(row["processed"], int) and isinstance(row["active"], int)


# -- the inspect view ----------------------------------------------------------------------


def test_flower_inspects_the_celeriac_worker(
    interop: InteropRun, flower: Flower, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    everyone = flower.json("/api/workers", refresh=1)
    assert {"stats", "registered", "active_queues", "conf"} <= set(everyone[node])
    info = flower.inspected(node)
    stats = info["stats"]
    assert stats["pid"] == celeriac_worker.proc.pid
    assert stats["broker"]["transport"] == interop.transport
    assert isinstance(stats["total"], dict)
    assert "interop.add" in info["registered"]
    assert [q["name"] for q in info["active_queues"]] == interop.pool[:2]
    assert isinstance(info["conf"], dict)
    assert info["active"] == [] and info["reserved"] == [] and info["scheduled"] == []
    assert isinstance(info["revoked"], list)
    page = flower.get(f"/worker/{node}")
    assert page.status_code == 200, page.text
    assert node in page.text and "interop.add" in page.text


# -- tasks, from the worker's task events ---------------------------------------------------


def test_flower_shows_a_celeriac_task_that_succeeded(
    interop: InteropRun, flower: Flower, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    result = celery.app.send_task("interop.add", (2, 3), queue=interop.pool[0])
    assert result.get(timeout=TIMEOUT) == 5
    info = wait_until(lambda: flower.task_in(result.id, "SUCCESS"), TIMEOUT, "SUCCESS")
    assert info["name"] == "interop.add" and info["worker"] == node
    assert info["result"] == "5" and info["runtime"] > 0
    assert info["received"] <= info["started"] <= info["succeeded"]
    listed = flower.json("/api/tasks", workername=node, state="SUCCESS")
    assert listed[result.id]["result"] == "5"
    assert listed[result.id]["worker"] == node
    # The worker's row counts what it processed as its next heartbeat (every 2 s) says.
    wait_until(
        lambda: any(
            row["hostname"] == node and row["processed"] >= 1
            for row in flower.json("/workers", json=1)["data"]
        ),
        TIMEOUT,
        "a heartbeat counting the task as processed",
    )


def test_flower_shows_a_celeriac_task_that_failed(
    interop: InteropRun, flower: Flower, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    result = celery.app.send_task("interop.fail_builtin", ("no luck",), queue=interop.pool[1])
    with pytest.raises(ValueError):
        result.get(timeout=TIMEOUT)
    info = wait_until(lambda: flower.task_in(result.id, "FAILURE"), TIMEOUT, "FAILURE")
    assert info["worker"] == node_of(celeriac_worker)
    assert info["exception"] == "ValueError('no luck')"
    assert "no luck" in info["traceback"]
    assert result.id in flower.json("/api/tasks", state="FAILURE")


# -- Flower's buttons ------------------------------------------------------------------------


def test_flower_grows_and_shrinks_the_celeriac_pool(
    flower: Flower, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    before = flower.inspected(node)["stats"]["pool"]["max-concurrency"]
    grown = flower.post(f"/api/worker/pool/grow/{node}?n=2")
    assert grown.status_code == 200, grown.text
    assert grown.json() == {"message": f"Growing '{node}' worker's pool by 2"}
    assert flower.inspected(node)["stats"]["pool"]["max-concurrency"] == before + 2
    shrunk = flower.post(f"/api/worker/pool/shrink/{node}?n=2")
    assert shrunk.status_code == 200, shrunk.text
    assert flower.inspected(node)["stats"]["pool"]["max-concurrency"] == before


def test_flower_adds_and_cancels_a_consumer_on_the_celeriac_worker(
    interop: InteropRun, flower: Flower, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    node, queue = node_of(celeriac_worker), interop.private_queue()
    added = flower.post(f"/api/worker/queue/add-consumer/{node}?queue={queue}")
    assert added.status_code == 200, added.text
    assert added.json() == {"message": f"add consumer {queue}"}
    result = celery.app.send_task("interop.add", (20, 22), queue=queue)
    assert result.get(timeout=TIMEOUT) == 42
    queues = [q["name"] for q in flower.inspected(node)["active_queues"]]
    assert queue in queues
    cancelled = flower.post(f"/api/worker/queue/cancel-consumer/{node}?queue={queue}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"message": f"no longer consuming from {queue}"}
    queues = [q["name"] for q in flower.inspected(node)["active_queues"]]
    assert queue not in queues


def test_flower_revokes_and_terminates_a_running_celeriac_task(
    interop: InteropRun, flower: Flower, celery: ModuleType, celeriac_worker: WorkerProcess
) -> None:
    from celery.exceptions import TaskRevokedError

    name = interop.marker()
    result = celery.app.send_task("interop.wait_for_mark", (name,), queue=interop.pool[0])
    try:
        wait_until(lambda: flower.task_in(result.id, "STARTED"), TIMEOUT, "STARTED")
        active = flower.inspected(node_of(celeriac_worker))["active"]
        assert [t["id"] for t in active] == [result.id]
        revoked = flower.post(f"/api/task/revoke/{result.id}?terminate=true")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json() == {"message": f"Revoked '{result.id}'"}
        info = wait_until(lambda: flower.task_in(result.id, "REVOKED"), TIMEOUT, "REVOKED")
        assert info["worker"] == node_of(celeriac_worker)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=TIMEOUT)
    finally:
        (interop.marks / name).touch()  # the sync task's thread ends, if it is still looking


def test_flower_sets_time_limits_on_the_celeriac_worker(
    flower: Flower, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    limited = flower.post("/api/task/timeout/interop.add", soft="10", hard="20", workername=node)
    assert limited.status_code == 200, limited.text
    assert limited.json() == {"message": "time limits set successfully"}


def test_flower_sets_a_rate_limit_on_the_celeriac_worker(
    flower: Flower, celeriac_worker: WorkerProcess
) -> None:
    node = node_of(celeriac_worker)
    try:
        limited = flower.post("/api/task/rate-limit/interop.add", ratelimit="10/m", workername=node)
        assert limited.status_code == 200, limited.text
        assert limited.json() == {"message": "new rate limit set successfully"}
        registered = flower.inspected(node)["registered"]
        assert "interop.add [rate_limit=10/m]" in registered
        bad = flower.post("/api/task/rate-limit/interop.add", ratelimit="10/d", workername=node)
        assert bad.status_code == 403
        assert bad.text.startswith(
            "Failed to set rate limit: 'Invalid rate limit string: bad rate limit '10/d'"
        )
    finally:
        lifted = flower.post("/api/task/rate-limit/interop.add", ratelimit="0", workername=node)
    assert lifted.json() == {"message": "rate limit disabled successfully"}
    assert "interop.add" in flower.inspected(node)["registered"]


def test_flower_shows_the_celeriac_workers_refusals(
    flower: Flower, celeriac_worker: WorkerProcess
) -> None:
    """What celeriac does not do comes back as Flower's error, with the worker's reason."""
    node = node_of(celeriac_worker)
    scaled = flower.post(f"/api/worker/pool/autoscale/{node}?min=1&max=4")
    assert scaled.status_code == 403
    assert scaled.text.startswith(f"Failed to autoscale '{node}' worker: autoscale is not in")
    restarted = flower.post(f"/api/worker/pool/restart/{node}")
    assert restarted.status_code == 403
    assert restarted.text.startswith(f"Failed to restart the '{node}' pool: pool_restart is not")


def test_flower_shuts_down_a_celeriac_worker(interop: InteropRun, flower: Flower) -> None:
    worker = interop.start_celeriac_worker([interop.private_queue()])
    node = node_of(worker)
    unknown = flower.post(f"/api/worker/shutdown/{node}")
    assert unknown.status_code == 404  # Flower acts only on a worker it has inspected
    wait_until(
        lambda: flower.get("/api/workers", workername=node, refresh=1).status_code == 200,
        TIMEOUT,
        "Flower to inspect the private worker",
    )
    wait_until(lambda: flower.status().get(node), TIMEOUT, "Flower to hear the private worker")
    stopped = flower.post(f"/api/worker/shutdown/{node}")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"message": "Shutting down!"}
    assert worker.proc.wait(TIMEOUT) == 0
    assert "remote control asked it to shut down" in worker.log()
    wait_until(lambda: flower.status().get(node) is not True, TIMEOUT, "Flower to see it leave")
