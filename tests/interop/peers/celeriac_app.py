"""The celeriac peer: ``python -m celeriac.cli -A interop.peers.celeriac_app:app worker``, or a
client app. Task names match ``celery_app`` exactly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celeriac import Celery, chain, group
from interop.peers import settings
from interop.peers.errors import InteropError, TransientError

app = Celery("interop_celeriac_peer")


def configure() -> None:
    """(Re)read the settings from the environment; call before the app first connects."""
    app.conf.update(
        broker_url=settings.broker_url(),
        result_backend=settings.result_backend(),
        broker_transport_options=settings.broker_transport_options(),
        result_backend_transport_options=settings.result_backend_transport_options(),
        task_default_queue=settings.default_queue(),
        task_queue_max_priority=settings.max_priority(),
    )


configure()


@app.task(name="interop.add")
async def add(x: int, y: int) -> int:
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
async def fail(message: str, code: int) -> None:
    raise InteropError(message, code)


@app.task(name="interop.fail_builtin")
def fail_builtin(message: str) -> None:
    raise ValueError(message)


@app.task(name="interop.fail_worker_only")
def fail_worker_only(message: str) -> None:
    from interop.peers.worker_only import WorkerOnlyError  # never imported by the test process

    raise WorkerOnlyError(message)


@app.task(name="interop.flaky", bind=True, max_retries=2)
async def flaky(self: Any, fail_times: int) -> dict[str, Any]:
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
async def progress_then_wait(self: Any, name: str) -> str:
    await self.update_state(state="PROGRESS", meta={"current": 1, "total": 2})
    deadline = time.monotonic() + settings.MARKER_WAIT
    while time.monotonic() < deadline:
        if (settings.marks() / name).exists():
            return "released"
        await asyncio.sleep(0.01)
    return "timed out"


# -- canvas: the same names and behaviour in celery_app ------------------------------------

#: Which framework ran a task, as ``interop.add_noted`` records it.
SIDE = "celeriac"


@app.task(name="interop.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.tsum")
async def tsum(values: list[int]) -> int:
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
