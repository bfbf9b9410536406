"""Canvases under a kill -9: a worker killed while a chain step (or a chord's last header
task) runs, another worker started, and the canvas still completes, with no step lost,
forked or run again after the one that was interrupted.

On every broker a worker subprocess reaches (the ``broker_url`` fixture): the embedded SQLite
broker (a new consumer gives back a dead holder's messages at once, its process being gone),
Redis (after the short visibility timeout the fixture sets) and RabbitMQ (at once: the
connection dropped), results in Redis there. Not on ``rpc://`` results: a result goes only
to the process that sent the task, so the test cannot read each step's result, and the
worker's rule against running a finished step again needs a store it can read (see
``celeriac.worker.canvas``); its broker is RabbitMQ, already covered.

Why it holds: the worker that finishes a step publishes the next one, then stores the
step's result, then acknowledges its message (``acks_late``; with early acks a killed task
is lost, in Celery too). Killed while a step runs, the worker published nothing after it and
never acknowledged it: the broker hands that step to the next worker, which runs it again
and publishes the next step under the id frozen in the chain. A copy of a step that had
ended (its result stored) is not run again.

The steps record their runs in a file (``apps/canvas_reliable.py``); the held step waits,
of its own accord, for a release file that the test writes once the second worker runs it.

The last test kills the worker in the narrower window between publishing the next step and
storing the step's result: the next step then exists twice, and the second copy, arriving
while the first runs in the same worker, waits for the first one's outcome (as a
redelivered copy does) instead of running beside it and publishing the rest of the chain
a second time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import chain, chord, states
from services import wait_until

from .conftest import WorkerProcess

pytestmark = pytest.mark.integration

APP = "canvas_reliable:app"
#: Enough slots for a chord's header to run side by side.
CONCURRENCY = "4"
#: The chain's length, and the step the worker is killed in.
STEPS, HELD = 5, 2
#: The chord's header size; its last task is the one the worker is killed in.
HEADER = 3
#: For each wait on a worker or a result.
TIMEOUT = 20.0

Runs = dict[int, list[dict[str, Any]]]


@pytest.fixture
def canvas_reliable(broker_url: str) -> Iterator[Any]:
    """The ``canvas_reliable`` app module, configured for this test's stores; its sync
    connections closed afterwards."""
    import canvas_reliable as module  # type: ignore[import-not-found]

    module.configure_from_env()
    yield module
    module.app.close()


def read_runs(marks: Path, kind: str) -> Runs:
    """Step index -> its runs' ``kind`` records (``start`` or ``end``), in order."""
    path = marks / "runs.jsonl"
    out: Runs = defaultdict(list)
    if path.exists():
        # A line still being written (no newline yet) is left for the next read.
        for line in path.read_text().split("\n")[:-1]:
            record = json.loads(line)
            if record["kind"] == kind:
                out[record["index"]].append(record)
    return out


def pids(records: list[dict[str, Any]]) -> list[int]:
    return [record["pid"] for record in records]


def kill_while_held(
    a: WorkerProcess,
    start_worker: Callable[..., WorkerProcess],
    marks: Path,
    held: int,
    ended_before: range,
) -> WorkerProcess:
    """Kill worker ``a`` once task ``held`` runs on it and the tasks ``ended_before`` have
    stored their results; start worker B; release the held task once B runs it again."""
    wait_until(lambda: read_runs(marks, "start")[held], TIMEOUT, f"task {held} to run on A")
    ends = read_runs(marks, "end")
    for index in ended_before:
        # Logged once stored: a copy of that task, should the broker still hold its
        # message, is then a copy of a finished task, and does not run again.
        a.wait_for(f"[{ends[index][0]['id']}] succeeded", TIMEOUT)
    a.kill()
    assert a.proc.returncode == -signal.SIGKILL
    b = start_worker("-c", CONCURRENCY, "-n", "B@canvas", app=APP)
    wait_until(
        lambda: b.proc.pid in pids(read_runs(marks, "start")[held]),
        TIMEOUT,
        f"task {held} to run again, on B",
    )
    (marks / "release").touch()
    return b


def redis_holds(ids: list[str]) -> bool:
    """Whether the test's Redis broker (its keys, under the test's prefix) holds a message
    of any of ``ids``: on a queue's list or in ``unacked``."""
    import redis

    url = os.environ["CELERIAC_BROKER_URL"]
    prefix = json.loads(os.environ["CELERIAC_TEST_TRANSPORT_OPTIONS"])["global_keyprefix"]
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key)
            if kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = client.hvals(key)
            else:
                continue
            if any(id_.encode() in value for value in values for id_ in ids):
                return True
        return False
    finally:
        client.close()


def assert_stored(app: Any, task_id: str, value: Any) -> None:
    """The result store holds ``value`` as the task's SUCCESS."""
    result = app.AsyncResult(task_id)
    assert result.state == states.SUCCESS, (task_id, result.state)
    assert result.result == value, (task_id, result.result, value)


def test_kill_9_mid_chain_the_chain_completes(
    start_worker: Callable[..., WorkerProcess], canvas_reliable: Any, marks: Path
) -> None:
    """A chain of five ``acks_late`` steps; worker A is killed with SIGKILL while step 2
    runs; worker B runs step 2 again and the rest of the chain. The chain's result is the
    whole chain's; every step ran under one id (no fork); step 2 ran twice (on A, then on
    B), the steps before it once on A, the steps after it once on B; every step's stored
    result is the one its runs returned."""
    started = time.monotonic()
    a = start_worker("-c", CONCURRENCY, "-n", "A@canvas", app=APP)
    step = canvas_reliable.step
    steps = [step.s([], 0), *(step.s(i, hold=i == HELD) for i in range(1, STEPS))]
    result = chain(*steps).apply_async()

    b = kill_while_held(a, start_worker, marks, HELD, range(HELD))
    assert result.get(timeout=TIMEOUT) == list(range(STEPS))
    elapsed = time.monotonic() - started

    starts, ends = read_runs(marks, "start"), read_runs(marks, "end")
    assert sorted(starts) == list(range(STEPS)), "a step never ran"
    assert {pid for records in starts.values() for pid in pids(records)} <= {
        a.proc.pid,
        b.proc.pid,
    }
    for index in range(STEPS):
        ids = {record["id"] for record in starts[index]}
        assert len(ids) == 1, f"step {index} ran under {len(ids)} ids: the chain forked"
    assert pids(starts[HELD]) == [a.proc.pid, b.proc.pid], "the held step: once on A, once on B"
    assert pids(ends[HELD]) == [b.proc.pid], "the held step ended on A though A was killed"
    for index in range(HELD):
        assert pids(starts[index]) == [a.proc.pid], f"step {index} before the kill"
    for index in range(HELD + 1, STEPS):
        assert pids(starts[index]) == [b.proc.pid], f"step {index} after the kill"
    assert result.id == starts[STEPS - 1][0]["id"]
    for index in range(STEPS):
        values = [record["value"] for record in ends[index]]
        assert values == [list(range(index + 1))] * len(values), f"step {index}: {values}"
        assert_stored(canvas_reliable.app, starts[index][0]["id"], list(range(index + 1)))
    print(f"\nchain killed at step {HELD} completed in {elapsed:.2f} s")


def test_kill_9_in_the_last_header_task_the_chord_body_runs_once(
    start_worker: Callable[..., WorkerProcess], canvas_reliable: Any, marks: Path
) -> None:
    """A chord of three ``acks_late`` header tasks; worker A is killed with SIGKILL while the
    last one runs, the other two having ended; worker B runs it again, which completes the
    chord: the body runs once, on B, with every header task's result in order."""
    started = time.monotonic()
    a = start_worker("-c", CONCURRENCY, "-n", "A@canvas", app=APP)
    part, total = canvas_reliable.part, canvas_reliable.total
    last = HEADER - 1
    header = [part.s(i, hold=i == last) for i in range(HEADER)]
    result = chord(header, total.s()).apply_async()

    wait_until(lambda: len(read_runs(marks, "end")) == last, TIMEOUT, "the other header tasks")
    b = kill_while_held(a, start_worker, marks, last, range(last))
    expected = [10 * i for i in range(HEADER)]
    assert result.get(timeout=TIMEOUT) == expected
    elapsed = time.monotonic() - started

    starts = read_runs(marks, "start")
    body = starts[canvas_reliable.BODY_INDEX]
    assert pids(body) == [b.proc.pid], f"the body ran {len(body)}x: {body}"
    assert result.id == body[0]["id"]
    assert pids(starts[last]) == [a.proc.pid, b.proc.pid]
    for index in range(last):
        assert pids(starts[index]) == [a.proc.pid], f"header task {index}"
        assert_stored(canvas_reliable.app, starts[index][0]["id"], 10 * index)
    assert_stored(canvas_reliable.app, starts[last][0]["id"], 10 * last)
    print(f"\nchord killed in its last header task completed in {elapsed:.2f} s")


def test_kill_9_between_publishing_the_next_step_and_storing_the_chain_does_not_fork(
    start_worker: Callable[..., WorkerProcess], canvas_reliable: Any, marks: Path, broker_url: str
) -> None:
    """Worker A kills itself (SIGKILL) right after step 2 published step 3, before it stored
    step 2's result or acknowledged it. Worker B gets step 3 (A's copy) and step 2 again,
    which publishes step 3 a second time, under the same id, while the first copy runs
    (step 3 holds until released). Step 3 may run twice (the price of at-least-once), but
    the chain must not fork: step 4 must run once.

    The second copy of step 3 is not a redelivery: the worker makes it wait for the first
    copy's outcome all the same (any canvas message may be such a copy), so step 4 is
    published once. On SQLite and RabbitMQ the first copy always comes first and runs.

    On Redis the order is not fixed. A, idle in its blocking pop, may take its own step 3
    at once: held in ``unacked``, that copy comes back after the visibility timeout, before
    or after B's copy (whichever comes second waits or finds the step done); popped but
    killed before it was held, A loses that copy (the blocking pop's window, see
    ``celeriac.transports.redis.broker``), and B's is the only one. So there the test waits
    for one copy in hand, and, once the chain is done, for Redis to hold no message of any
    step: every copy was then delivered and settled, and step 4 must have run once.
    """
    on_redis = broker_url.startswith("redis")
    a = start_worker("-c", CONCURRENCY, "-n", "A@canvas", app=APP)
    step = canvas_reliable.step
    died, held, last = 2, 3, STEPS - 1
    steps = [
        step.s([], 0),
        *(step.s(i, hold=i == held, die_after_publish=i == died) for i in range(1, STEPS)),
    ]
    result = chain(*steps).apply_async()
    assert a.proc.wait(TIMEOUT) == -signal.SIGKILL
    # At debug level, B says when a copy waits for the run of the same step in progress.
    b = start_worker("-c", CONCURRENCY, "-n", "B@canvas", "-l", "debug", app=APP)
    held_id = wait_until(lambda: read_runs(marks, "start")[held], TIMEOUT, "step 3")[0]["id"]

    def lines(*texts: str) -> int:
        return sum(any(text in line for text in texts) for line in b.log().splitlines())

    in_hand = (f"[{held_id}] received", f"[{held_id}]: a redelivered copy waits")
    copies = 1 if on_redis else 2
    wait_until(lambda: lines(*in_hand) >= copies, TIMEOUT, f"{copies} copies of step 3 on B")
    (marks / "release").touch()
    assert result.get(timeout=TIMEOUT) == list(range(STEPS))
    if on_redis:
        starts = read_runs(marks, "start")
        step_ids = [starts[index][0]["id"] for index in range(STEPS)]
        wait_until(
            lambda: not redis_holds(step_ids), TIMEOUT, "Redis to hold no message of the chain"
        )
    else:
        # Every copy of step 3 settled, and every copy of step 4 they published too.
        published = f"[{held_id}] succeeded"
        settled = (
            published,
            f"[{held_id}] is a canvas step already",
            f"[{held_id}]: a redelivered copy of a run of this worker",
        )
        wait_until(lambda: lines(*settled) >= 2, TIMEOUT, "both copies of step 3 settled")
        last_id = read_runs(marks, "start")[last][0]["id"]
        wait_until(
            lambda: (
                lines(f"[{last_id}] succeeded", f"[{last_id}] is a canvas step already")
                >= lines(published)
            ),
            TIMEOUT,
            "every copy of step 4 settled",
        )

    starts = read_runs(marks, "start")
    for index in range(STEPS):
        ids = {record["id"] for record in starts[index]}
        assert len(ids) == 1, f"step {index} ran under {len(ids)} ids"
    assert len(starts[held]) <= 2
    assert pids(starts[last]) == [b.proc.pid], f"step {last} ran {len(starts[last])}x"
