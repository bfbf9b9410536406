"""A real worker process on the embedded SQLite broker, driven by sync and async clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac import states
from celeriac.errors import NotRegistered, TaskRevokedError, TimeLimitExceeded
from services import eventually

pytestmark = pytest.mark.integration


def wait_for_file(path: Path, lines: int = 1, timeout: float = 20.0) -> list[str]:
    """Wait (bounded) until a task has left ``lines`` marks in ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            content = path.read_text().splitlines()
            if len(content) >= lines:
                return content
        time.sleep(0.01)
    raise AssertionError(f"{path.name} never got {lines} line(s)")


@pytest.mark.rpc
def test_sync_client_gets_results_of_async_and_sync_tasks(start_worker: Any, basic: Any) -> None:
    worker = start_worker()
    r1 = basic.add.delay(2, 3)
    r2 = basic.mul.apply_async((4, 5))
    assert r1.get(timeout=20) == 5
    assert r2.get(timeout=20) == 20
    assert r1.state == states.SUCCESS and r1.successful() and r1.ready() and not r1.failed()
    assert r1.result == 5 and r1.info == 5 and r1.traceback is None
    assert r1.date_done is not None and r1.date_done.tzinfo is not None
    worker.wait_for(f"task basic.add[{r1.id}] succeeded in")
    worker.wait_for(f"task basic.mul[{r2.id}] received")


@pytest.mark.rpc
async def test_async_client_awaits_many_results(start_worker: Any, abasic: Any) -> None:
    start_worker("-c", "50")
    results = [await abasic.add.delay(i, i) for i in range(200)]
    values = await asyncio.gather(*(r.get(timeout=30) for r in results))
    assert values == [2 * i for i in range(200)]
    assert await results[0].successful()
    assert results[0].state == states.SUCCESS


@pytest.mark.rpc
async def test_delay_many_queues_a_batch_in_one_call(start_worker: Any, abasic: Any) -> None:
    """More calls than one chunk (SEND_MANY_CHUNK): every one runs once, with its own
    arguments, and its result comes back where its AsyncResult looks."""
    calls: list[Any] = [(i, 1) for i in range(2500)]
    calls.append({"x": 40, "y": 2})
    results = await abasic.add.delay_many(calls)
    start_worker("-c", "50")
    values = await asyncio.gather(*(r.get(timeout=60) for r in results))
    assert values == [i + 1 for i in range(2500)] + [42]
    assert len({r.id for r in results}) == len(calls)


@pytest.mark.rpc
async def test_failure_reraises_the_tasks_exception(start_worker: Any, abasic: Any) -> None:
    start_worker()
    r = await abasic.boom.delay("it broke")
    with pytest.raises(abasic.CustomError) as info:
        await r.get(timeout=20)
    assert info.value.args == ("it broke", 42)
    assert "Remote traceback" in "".join(getattr(info.value, "__notes__", []))
    assert await r.failed()
    assert r.state == states.FAILURE
    assert "CustomError" in (r.traceback or "")
    exc = await r.get(timeout=5, propagate=False)
    assert isinstance(exc, abasic.CustomError)
    r2 = await abasic.builtin_boom.delay()
    with pytest.raises(ValueError, match="kaboom"):
        await r2.get(timeout=20)


@pytest.mark.rpc
def test_retries_then_success_and_max_retries(start_worker: Any, basic: Any, marks: Path) -> None:
    worker = start_worker()
    ok = basic.flaky.delay(2)
    outcome = ok.get(timeout=20)
    assert outcome["retries"] == 2
    assert outcome["hostname"].startswith("celeriac@")
    worker.wait_for(f"task basic.flaky[{ok.id}] retry 2")
    never = basic.always_retry.delay()
    with pytest.raises(KeyError):
        never.get(timeout=20)
    auto = basic.auto.delay("auto")
    with pytest.raises(ConnectionError, match="still down"):
        auto.get(timeout=20)
    assert wait_for_file(marks / "auto", 3) == ["try"] * 3


@pytest.mark.rpc
def test_countdown_does_not_block_other_work(start_worker: Any, basic: Any) -> None:
    start_worker("-c", "2")
    sent = datetime.now(UTC)
    later = basic.add.apply_async((1, 1), countdown=1.0)
    now = basic.add.delay(2, 2)
    assert now.get(timeout=20) == 4
    assert not later.ready()
    assert later.get(timeout=20) == 2
    assert later.date_done is not None
    assert later.date_done - sent >= timedelta(seconds=1.0)


@pytest.mark.rpc
def test_expired_task_is_revoked_without_running(
    start_worker: Any, basic: Any, marks: Path
) -> None:
    start_worker()
    past = datetime.now(UTC) - timedelta(seconds=1)
    r = basic.record.apply_async(("expired", "ran"), expires=past)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=20)
    assert r.state == states.REVOKED
    assert basic.record.delay("fresh", "ran").get(timeout=20) == "ran"
    assert not (marks / "expired").exists()


def test_priorities_higher_first(start_worker: Any, basic: Any, marks: Path) -> None:
    low = [basic.record.apply_async(("order", f"low{i}"), priority=0) for i in range(5)]
    high = [basic.record.apply_async(("order", f"high{i}"), priority=9) for i in range(5)]
    start_worker("-c", "1", "--prefetch-multiplier", "1")
    for r in low + high:
        r.get(timeout=20)
    order = wait_for_file(marks / "order", 10)
    assert order == [f"high{i}" for i in range(5)] + [f"low{i}" for i in range(5)]


@pytest.mark.parametrize("name", ["hard_async", "hard_sync"])
def test_hard_time_limit_fails_the_task(start_worker: Any, basic: Any, name: str) -> None:
    start_worker()
    r = getattr(basic, name).delay()
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=20)


@pytest.mark.parametrize("name", ["soft_async", "soft_sync"])
def test_soft_time_limit_raises_inside_the_task(start_worker: Any, basic: Any, name: str) -> None:
    start_worker()
    assert getattr(basic, name).delay().get(timeout=20) == "cleaned up"


@pytest.mark.rpc
def test_update_state_is_visible_while_running(start_worker: Any, basic: Any, marks: Path) -> None:
    start_worker()
    r = basic.progress_then_wait.delay("release")
    deadline = time.monotonic() + 20
    while r.state != "PROGRESS":
        assert time.monotonic() < deadline, "PROGRESS never stored"
    assert r.info == {"current": 1, "total": 2}
    (marks / "release").touch()
    assert r.get(timeout=20) == "released"


async def test_a_resource_is_built_once_per_process_and_torn_down_once(
    start_worker: Any, abasic: Any, marks: Path
) -> None:
    worker = start_worker()
    sent = [await abasic.resource_id_async.delay(i) for i in range(500)]
    sent += [await abasic.resource_id_sync.delay(i) for i in range(500)]
    seen = {tuple(await r.get(timeout=60)) for r in sent}
    # One process, one instance, 1,000 tasks (async on the loop, sync in threads).
    assert len(seen) == 1 and next(iter(seen))[0] == worker.proc.pid
    assert (marks / "resource-built").read_text().split() == [str(worker.proc.pid)]
    assert not (marks / "resource-closed").exists()
    assert worker.stop() == 0
    assert (marks / "resource-closed").read_text().split() == [str(worker.proc.pid)]


@pytest.mark.rpc
async def test_progress_streams_to_the_caller_while_the_task_runs(
    start_worker: Any, abasic: Any, marks: Path
) -> None:
    start_worker()
    result = await abasic.count_up.delay(100, "release")
    events = []
    async for event in result.stream(timeout=30):
        events.append(event)
        (marks / "release").touch()  # the task is still waiting for this after event 1
    assert [e.info["current"] for e in events[:-1]] == list(range(1, 101))
    assert events[-1].state == "SUCCESS" and events[-1].info == {"current": 100, "total": 100}


@pytest.mark.rpc
def test_sync_callers_iterate_the_stream_of_a_sync_generator_task(
    start_worker: Any, basic: Any
) -> None:
    start_worker()
    result = basic.count_up_sync.delay(30)
    events = list(result.stream(timeout=30))
    assert events[-1].state == "SUCCESS" and events[-1].info == 30
    progress = [e.info for e in events[:-1]]
    # However late it attached: the latest state first, then every later one, in order.
    assert progress == list(range(30 - len(progress), 30))


@pytest.mark.rpc
def test_request_context(start_worker: Any, basic: Any) -> None:
    start_worker("-Q", "celery,other")
    r = basic.whoami.apply_async(queue="other")
    assert r.get(timeout=20) == {"id": r.id, "retries": 0, "queue": "other"}


def test_get_inside_a_task_is_refused(start_worker: Any, basic: Any) -> None:
    start_worker()
    assert basic.waits_inside.delay("x").get(timeout=20) == "SyncWaitInTaskError"


def test_graceful_shutdown_finishes_running_tasks(
    start_worker: Any, basic: Any, marks: Path
) -> None:
    worker = start_worker()
    r = basic.slow.delay(1.0, "graceful")
    wait_for_file(marks / "graceful.start")
    assert worker.stop(signal.SIGTERM) == 0
    assert (marks / "graceful.end").exists()
    assert r.get(timeout=5) == "graceful"


def test_shutdown_timeout_requeues_unfinished_tasks(
    start_worker: Any, basic: Any, marks: Path
) -> None:
    worker = start_worker("--shutdown-timeout", "0.2")
    r = basic.slow.delay(1.5, "requeued")
    wait_for_file(marks / "requeued.start")
    assert worker.stop(signal.SIGTERM) == 0
    worker.wait_for("requeueing 1 unfinished task(s)")
    assert not r.ready()
    start_worker()
    assert r.get(timeout=20) == "requeued"
    assert len(wait_for_file(marks / "requeued.start", 2)) == 2


def test_kill_9_mid_task_then_restart_completes(start_worker: Any, basic: Any, marks: Path) -> None:
    worker = start_worker()
    r = basic.slow_sync.delay(1.0, "killed")
    wait_for_file(marks / "killed.start")
    worker.kill()
    started = time.monotonic()
    start_worker()
    assert r.get(timeout=30) == "killed"
    assert time.monotonic() - started < 15, "redelivery waited for a long visibility timeout"
    assert len(wait_for_file(marks / "killed.start", 2)) == 2


def test_kill_9_of_producer_loses_nothing(
    start_worker: Any, basic: Any, broker_url: str, tmp_path: Path
) -> None:
    script = (
        "import os, signal, basic\n"
        "r = basic.add.apply_async((20, 22), task_id='from-killed-producer')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env_path = str(Path(__file__).parent / "apps")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    assert proc.returncode == -signal.SIGKILL
    start_worker()
    assert basic.app.AsyncResult("from-killed-producer").get(timeout=20) == 42


async def test_bad_input_is_dead_lettered_and_worker_keeps_running(
    start_worker: Any, abasic: Any
) -> None:
    from celeriac.protocol.envelope import Envelope

    worker = start_worker()
    broker = (await abasic.app.connection()).broker
    garbage = Envelope(b"\x00not json", "application/json", "utf-8", {"task": "x", "id": "1"})
    await broker.publish("celery", garbage)
    worker.wait_for("rejected a malformed message")
    unknown = await abasic.app.send_task("no.such.task", args=[1])
    with pytest.raises(NotRegistered, match=r"unregistered task 'no\.such\.task'"):
        await unknown.get(timeout=20)
    wrong = await abasic.app.send_task("basic.add", args=[1])
    with pytest.raises(TypeError, match=r"wrong arguments for basic\.add"):
        await wrong.get(timeout=20)
    assert await (await abasic.add.delay(1, 1)).get(timeout=20) == 2

    async def three_letters() -> bool:
        # The worker stores a rejected task's failure before it settles the message, so a
        # caller can see the failure a moment before the dead letter lands (RabbitMQ).
        return await broker.dead_letter_count() == 3

    await eventually(three_letters, what="three dead letters")
    letters = await broker.dead_letters()
    reasons = " | ".join(letter.reason for letter in letters)
    assert "malformed message" in reasons
    assert "unregistered task" in reasons
    assert "wrong arguments" in reasons
    assert worker.proc.poll() is None


def test_two_workers_and_two_producers_share_one_file(
    start_worker: Any, basic: Any, marks: Path, tmp_path: Path
) -> None:
    first, second = start_worker("-n", "one@host"), start_worker("-n", "two@host")
    script = (
        "import sys, basic\n"
        "for i in range(150):\n"
        "    basic.record.delay('shared', f'{sys.argv[1]}-{i}')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "apps")}
    producers = [
        subprocess.Popen([sys.executable, "-c", script, name], cwd=tmp_path, env=env)
        for name in ("a", "b")
    ]
    assert [p.wait(60) for p in producers] == [0, 0]
    lines = wait_for_file(marks / "shared", 300, timeout=60)
    assert sorted(lines) == sorted(f"{n}-{i}" for n in "ab" for i in range(150))
    assert first.wait_for("succeeded in") and second.wait_for("succeeded in")
