"""A graceful stop on RabbitMQ hands back nothing that finished (issue 17, finding 6).

The report: under a deep backlog, SIGTERM while tasks run, the worker logged a clean stop,
yet tasks that had succeeded came back to the queue and the next worker ran them again; once
the worker also hung after its last task.

Here ``celeriac worker`` processes (``-c 100``, so 400 deliveries held: the prefetch window
stays full) take turns on a backlog of 2,000 tasks and each gets SIGTERM while its tasks
run. The tasks (``ticking``) end on the same wall-clock tick, so a worker's running tasks
end, and are acknowledged, together: a burst of a hundred acks right before the channel
closes, which is what lost acknowledgements. Every run is written to a file by task id.

The last test pins down the hang: acks waiting for room in aiormq's writer queue when their
connection goes must end, not wait forever.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp.broker import AmqpBroker
from celeriac.transports.broker import PublishRequest
from services import amqp_vhost_url, delete_amqp_queues, wait_until

from .conftest import APPS, READY, WorkerProcess
from .test_redis_reliability import assert_clean_stop

pytestmark = pytest.mark.integration

BACKLOG = 2000
CONCURRENCY = 100  # with the default prefetch multiplier (4): 400 deliveries held
TICK = 0.25  # seconds: the running tasks all end on the next multiple of it
STOPS = 6
#: A stop waits for its running tasks (at most one TICK), then closes: far less than this.
STOP_BOUND_S = 4.0
#: The workers' shutdown timeout: far above a task's length (nothing is cut off), and short
#: enough that a stop stuck on its acknowledgements ends within the test's time.
SHUTDOWN_TIMEOUT_S = 5.0


class Runs:
    """The ``start``/``end`` lines the workers wrote, read afresh on each call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        return [(k, i, int(p)) for k, i, p in (line.split() for line in complete.splitlines())]

    def counts(self, kind: str) -> Counter[str]:
        return Counter(task_id for k, task_id, _ in self.lines() if k == kind)

    def of(self, pid: int) -> Counter[str]:
        """How many tasks ``pid`` started and ended."""
        return Counter(kind for kind, _, p in self.lines() if p == pid)


@pytest.fixture
def ticking(
    amqp_vhost: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Runs]]:
    """The ``ticking`` app on the session's vhost, in a queue of this test's own, no result
    backend; the queue name and the runs it records."""
    url = amqp_vhost_url(amqp_vhost)
    queue = f"graceful-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CELERIAC_BROKER_URL", url)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)
    monkeypatch.setenv("CELERIAC_TEST_RUNS", str(tmp_path / "runs"))
    try:
        yield queue, Runs(tmp_path / "runs")
    finally:
        asyncio.run(delete_amqp_queues([queue], url))


@pytest.fixture
def start_ticking(
    tmp_path: Path, ticking: tuple[str, Runs]
) -> Iterator[Callable[[str], WorkerProcess]]:
    queue, _ = ticking
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), env.get("PYTHONPATH", "")])
        argv = [sys.executable, "-m", "celeriac.cli", "-A", "ticking:app", "worker", "-l", "info"]
        argv += ["-Q", queue, "-c", str(CONCURRENCY), "-n", name]
        argv += ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)]
        worker = WorkerProcess(argv, env, tmp_path)
        started.append(worker)
        worker.wait_for(READY)
        return worker

    yield start
    for worker in started:
        worker.close()


async def _publish(queue: str, count: int) -> list[str]:
    import ticking

    ids: list[str] = []
    async with ticking.app.setup():
        for start in range(0, count, 500):
            size = min(500, count - start)
            batch = [ticking.tick.apply_async((TICK,), queue=queue) for _ in range(size)]
            ids += [result.id for result in await asyncio.gather(*batch)]
    return ids


def _stop_while_running(runs: Runs, worker: WorkerProcess) -> float:
    """SIGTERM once the worker has ended a cohort and runs the next; how long the stop took."""
    pid = worker.proc.pid

    def running_after_a_cohort() -> bool:
        done = runs.of(pid)
        return done["end"] >= CONCURRENCY and done["start"] > done["end"]

    wait_until(running_after_a_cohort, 30, "a cohort to end and the next to run")
    began = time.monotonic()
    assert_clean_stop(worker)
    return time.monotonic() - began


@pytest.mark.timeout(120)
def test_sigterm_under_a_full_prefetch_window_reruns_nothing_that_finished(
    ticking: tuple[str, Runs], start_ticking: Callable[[str], WorkerProcess]
) -> None:
    """Six workers in turn each get SIGTERM while a hundred tasks run; a last one drains the
    rest. Every task ran exactly once: none that finished came back (a graceful stop with a
    shutdown timeout far above a task's length cuts nothing off), none was lost, and every
    stop ended within seconds of its last task."""
    queue, runs = ticking
    ids = asyncio.run(_publish(queue, BACKLOG))
    durations = [_stop_while_running(runs, start_ticking(f"stop{n}@amqp")) for n in range(STOPS)]
    last = start_ticking("last@amqp")
    wait_until(lambda: len(runs.counts("end")) >= BACKLOG, 60, "every task to end")
    assert_clean_stop(last)

    print(f"\n{STOPS} stops took {', '.join(f'{d:.2f}' for d in durations)} s")
    starts, ends = runs.counts("start"), runs.counts("end")
    again = sorted(task_id for task_id, n in ends.items() if n > 1)
    assert not again, f"{len(again)} finished task(s) ran again, e.g. {again[:5]}"
    assert set(ends) == set(ids), "some task never ran"
    assert starts == ends, "a task was cut off mid-run by a graceful stop"
    assert max(durations) < STOP_BOUND_S, f"a stop took {max(durations):.1f} s"


async def test_acks_caught_in_a_burst_end_when_the_connection_closes(amqp_vhost: str) -> None:
    """A hundred acks at once fill aiormq's writer queue (ten frames) and wait for room;
    the connection then closes under them. Every ack ends within seconds (RabbitMQ puts the
    messages back, nothing to do) instead of waiting forever on a queue no one reads."""
    url = amqp_vhost_url(amqp_vhost)
    queue = f"burst-{uuid.uuid4().hex[:12]}"
    broker = AmqpBroker(url)
    await broker.connect()
    deliveries = broker.consume([queue], prefetch=100)
    try:
        envelope = Envelope(b"{}", "application/json", "utf-8")
        await broker.publish_many([PublishRequest(queue, envelope) for _ in range(100)])
        held = [await anext(deliveries) for _ in range(100)]
        acks = {asyncio.ensure_future(broker.ack(delivery)) for delivery in held}
        connection = broker._connection
        assert connection is not None
        await connection.close()
        _, waiting = await asyncio.wait(acks, timeout=5)
        assert not waiting, f"{len(waiting)} of 100 acks still wait on a closed connection"
    finally:
        await deliveries.aclose()
        await broker.close()
        await delete_amqp_queues([queue], url)
