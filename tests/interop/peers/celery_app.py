"""The real-Celery peer: ``celery -A interop.peers.celery_app worker``, or a client app.

Task names match ``celeriac_app`` exactly, so either side can call the other's tasks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery, chain, group

from interop.peers import settings
from interop.peers.closing import close_celery_app
from interop.peers.errors import InteropError, TransientError

app = Celery("interop_celery_peer")


def close() -> None:
    """Close the peer app and what its result backend opened (see ``closing``)."""
    close_celery_app(app)


def configure() -> None:
    """(Re)read the settings from the environment. Called again (the module's run on the
    next broker), it first drops what Celery cached from the last run: its connections and
    producers, its queue declarations and its result backend."""
    close()
    app._backend_cache = None  # the next run's backend is made afresh
    app.__dict__.pop("amqp", None)
    app._local = threading.local()
    app.conf.update(
        broker_url=settings.broker_url(),
        result_backend=settings.result_backend(),
        broker_transport_options=settings.broker_transport_options(),
        result_backend_transport_options=settings.result_backend_transport_options(),
        task_default_queue=settings.default_queue(),
        task_queue_max_priority=settings.max_priority(),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        enable_utc=True,
        worker_hijack_root_logger=True,
    )


configure()


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="interop.describe")
def describe(*values: Any) -> list[list[str]]:
    return [[type(value).__name__, repr(value)] for value in values]


@app.task(name="interop.typed_values")
def typed_values() -> list[Any]:
    return settings.typed_values()


@app.task(name="interop.fail")
def fail(message: str, code: int) -> None:
    raise InteropError(message, code)


@app.task(name="interop.fail_builtin")
def fail_builtin(message: str) -> None:
    raise ValueError(message)


@app.task(name="interop.fail_worker_only")
def fail_worker_only(message: str) -> None:
    from interop.peers.worker_only import WorkerOnlyError  # never imported by the test process

    raise WorkerOnlyError(message)


@app.task(name="interop.flaky", bind=True, max_retries=2)
def flaky(self: Any, fail_times: int) -> dict[str, Any]:
    if self.request.retries < fail_times:
        raise self.retry(exc=TransientError(f"attempt {self.request.retries}"), countdown=0.2)
    return {"retries": self.request.retries}


@app.task(name="interop.whoami", bind=True)
def whoami(self: Any) -> dict[str, Any]:
    info = self.request.delivery_info or {}
    return {
        "id": self.request.id,
        "retries": self.request.retries,
        "queue": info.get("routing_key"),
        "priority": info.get("priority"),
        "ran_at": time.time(),
    }


@app.task(name="interop.record")
def record(name: str, value: str) -> str:
    settings.mark(name, value)
    return value


@app.task(name="interop.record_priority", bind=True)
def record_priority(self: Any, name: str, label: str) -> str:
    priority = (self.request.delivery_info or {}).get("priority")
    settings.mark(name, f"{label} {priority}")
    return label


@app.task(name="interop.progress_then_wait", bind=True)
def progress_then_wait(self: Any, name: str) -> str:
    self.update_state(state="PROGRESS", meta={"current": 1, "total": 2})
    return "released" if settings.wait_for_marker(name) else "timed out"


# -- canvas: the same names and behaviour in celeriac_app ----------------------------------

#: Which framework ran a task, as ``interop.add_noted`` records it.
SIDE = "celery"


@app.task(name="interop.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.tsum")
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(name="interop.boom")
def boom(*args: Any) -> None:
    raise ValueError("kaboom")


@app.task(name="interop.add_noted")
def add_noted(x: int, y: int, name: str) -> int:
    """``x + y``, leaving a line in marker ``name`` saying which framework ran it."""
    settings.mark(name, f"{SIDE} {x} {y}")
    return x + y


@app.task(name="interop.on_error_old")
def on_error_old(task_id: str, name: str) -> None:
    """An old-style errback: published as a task, called with the failed task's id."""
    settings.mark(name, f"old {task_id}")


@app.task(name="interop.on_error_new")
def on_error_new(request: Any, exc: BaseException, traceback: Any, name: str) -> None:
    """A new-style errback: called in the worker that ran the failed task."""
    settings.mark(name, f"new {request.id} {type(exc).__name__} {exc}")


@app.task(name="interop.replaced_by_chain", bind=True)
def replaced_by_chain(self: Any, x: int) -> None:
    """Replaces itself with ``mul(x, 2) | add(10)``: its result is that chain's."""
    raise self.replace(chain(mul.s(x, 2), add.s(10)))


@app.task(name="interop.wait_for_mark")
def wait_for_mark(name: str) -> str:
    """Runs until the test creates marker ``name`` (remote control sees it running)."""
    settings.wait_for_marker(name)
    return name


@app.task(name="interop.replaced_by_urgent_whoami", bind=True)
def replaced_by_urgent_whoami(self: Any) -> None:
    """Replaces itself with ``whoami`` at priority 4 (in this side's numbers)."""
    raise self.replace(whoami.si().set(priority=4))


@app.task(name="interop.replaced_by_boom", bind=True)
def replaced_by_boom(self: Any) -> None:
    """Replaces itself with ``boom``, which fails: the failure is this task's."""
    raise self.replace(boom.s())


@app.task(name="interop.replaced_by_group", bind=True)
def replaced_by_group(self: Any, n: int) -> None:
    """Replaces itself with a group: its result is the list of the members' results."""
    raise self.replace(group(mul.s(i, 2) for i in range(n)))
