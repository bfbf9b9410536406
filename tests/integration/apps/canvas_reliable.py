"""Canvas steps for the kill -9 tests of ``test_canvas_reliability.py``: every run is recorded,
and a step asked to hold waits, while it runs, until the test releases it.

Each run appends a ``start`` and an ``end`` line (JSON: kind, task id, pid, the step's index,
the value it returns) to ``runs.jsonl`` in the test's marks directory
(``CELERIAC_TEST_MARKS``), with one ``write`` of an ``O_APPEND`` descriptor, so that the
lines of two worker processes never interleave. A holding step's ``start`` line is the sign
the test waits for before it kills the worker; the step then polls for the ``release`` file.

Every task is ``acks_late``: its message is acknowledged only once it ended, so a worker
killed while it runs leaves it to the broker to hand to another worker. (With early acks
the message is gone before the task runs: a killed worker loses the task, and the rest of
its chain with it, in Celery as here.)

Broker and results come from the environment, as for the ``basic`` app.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeriac import Celery
from celeriac.worker.canvas import CanvasSteps

if TYPE_CHECKING:
    from celeriac.protocol.message import TaskMessage
    from celeriac.worker.canvas import Embed

app = Celery("canvas_reliable")

RUNS = "runs.jsonl"
RELEASE = "release"
#: Made (once) by the worker that kills itself after publishing a step's next step.
DIED = "died-after-publish"
#: How long a holding step waits for its release before it gives up (and fails the test).
HOLD_LIMIT = 60.0
#: Between two looks for the release file.
HOLD_POLL = 0.02


def configure_from_env() -> None:
    """The test's key prefix and visibility timeout; the test process calls this again for
    each test, since it imports this module once."""
    options = json.loads(os.environ.get("CELERIAC_TEST_TRANSPORT_OPTIONS") or "{}")
    app.conf.broker_transport_options = options
    prefix = options.get("global_keyprefix") or os.environ.get("CELERIAC_TEST_RESULT_PREFIX")
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix} if prefix else {}
    priority = os.environ.get("CELERIAC_TEST_MAX_PRIORITY")
    app.conf.task_queue_max_priority = int(priority) if priority else None


configure_from_env()


def marks() -> Path:
    return Path(os.environ["CELERIAC_TEST_MARKS"])


def record(kind: str, request: Any, index: int, value: Any = None) -> None:
    """Append one run record (a single write, so whole lines only)."""
    line = {"kind": kind, "id": request.id, "pid": os.getpid(), "index": index, "value": value}
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(marks() / RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


async def wait_for_release() -> None:
    """The holding step's own behaviour: look for the release file until it is there."""
    release = marks() / RELEASE
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_LIMIT
    while not release.exists():
        if loop.time() > deadline:
            raise TimeoutError(f"never released: no {release} after {HOLD_LIMIT} s")
        await asyncio.sleep(HOLD_POLL)


_publish_next_steps = CanvasSteps.succeeded


async def publish_then_die(
    steps: CanvasSteps, message: TaskMessage, embed: Embed, value: Any
) -> list[Any]:
    """:meth:`CanvasSteps.succeeded`, after which the first worker to publish the next
    step of a step called with ``die_after_publish`` kills itself (SIGKILL): its next step
    is out, its own result not stored, its message not acknowledged. No worker hook can be
    given to the ``celeriac worker`` command between those two points, hence the patch."""
    children = await _publish_next_steps(steps, message, embed, value)
    if message.kwargs.get("die_after_publish"):
        try:
            os.close(os.open(marks() / DIED, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return children
        os.kill(os.getpid(), signal.SIGKILL)
    return children


CanvasSteps.succeeded = publish_then_die  # type: ignore[method-assign, assignment]


@app.task(bind=True, acks_late=True)
async def step(
    self: Any, done: list[int], index: int, hold: bool = False, die_after_publish: bool = False
) -> list[int]:
    """A chain step: the indexes of the steps before it, then its own. ``die_after_publish``:
    see :func:`publish_then_die`."""
    record("start", self.request, index)
    if hold:
        await wait_for_release()
    value = [*done, index]
    record("end", self.request, index, value)
    return value


@app.task(bind=True, acks_late=True)
async def part(self: Any, index: int, hold: bool = False) -> int:
    """A chord header task: its index, times ten."""
    record("start", self.request, index)
    if hold:
        await wait_for_release()
    value = index * 10
    record("end", self.request, index, value)
    return value


#: The run records' index of the chord's body.
BODY_INDEX = -1


@app.task(bind=True, acks_late=True)
async def total(self: Any, values: list[int]) -> list[int]:
    """A chord body: the header's results as it got them."""
    record("start", self.request, BODY_INDEX)
    record("end", self.request, BODY_INDEX, values)
    return values
