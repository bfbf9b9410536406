"""What every result backend promises; runs once per transport (see conftest.BACKENDS)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from celeriac import errors
from celeriac.transports.backend import KeyValueBackend, ResultBackend
from services import eventually

from .conftest import TAKES_CLOCK, MakeBackend

WAIT = 5.0


def task_id() -> str:
    return str(uuid.uuid4())


def meta(tid: str, status: str, result: Any = None) -> dict[str, Any]:
    return {
        "status": status,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": "2024-01-01T00:00:00+00:00" if status == "SUCCESS" else None,
        "task_id": tid,
    }


async def test_store_and_get(backend: ResultBackend) -> None:
    tid = task_id()
    assert await backend.get(tid) is None
    await backend.store(tid, meta(tid, "STARTED"), expires=None)
    assert await backend.get(tid) == meta(tid, "STARTED")
    await backend.store(tid, meta(tid, "SUCCESS", [1, "two"]), expires=None)
    assert await backend.get(tid) == meta(tid, "SUCCESS", [1, "two"])


async def test_stores_issued_together_apply_in_order(backend: ResultBackend) -> None:
    """Stores started in one go (a batching transport may write them in one statement)
    land in the order they were made, and a batch of many ids keeps every one."""
    tid = task_id()
    others = [task_id() for _ in range(450)]
    await asyncio.gather(
        backend.store(tid, meta(tid, "STARTED"), expires=None),
        *(backend.store(o, meta(o, "SUCCESS", o), expires=None) for o in others),
        backend.store(tid, meta(tid, "PROGRESS", {"done": 1}), expires=None),
        backend.store(tid, meta(tid, "SUCCESS", 7), expires=None),
    )
    assert await backend.get(tid) == meta(tid, "SUCCESS", 7)
    for other in (others[0], others[199], others[200], others[-1]):
        assert await backend.get(other) == meta(other, "SUCCESS", other)


async def test_results_keep_datetimes_uuids_and_decimals(backend: ResultBackend) -> None:
    """Records are kombu JSON, as Celery's: its markers come back as the objects."""
    from datetime import UTC, datetime
    from decimal import Decimal

    tid = task_id()
    value = {"at": datetime(2030, 1, 2, tzinfo=UTC), "id": uuid.UUID(int=7), "n": Decimal("1.5")}
    await backend.store(tid, meta(tid, "SUCCESS", value), expires=None)
    record = await backend.get(tid)
    assert record is not None and record["result"] == value


async def test_wait_returns_a_record_already_ready(backend: ResultBackend) -> None:
    tid = task_id()
    await backend.store(tid, meta(tid, "FAILURE", {"exc_type": "ValueError"}), expires=None)
    assert (await backend.wait(tid, timeout=WAIT))["status"] == "FAILURE"


async def test_wait_ends_on_a_ready_state_stored_elsewhere(make_backend: MakeBackend) -> None:
    waiter, worker = await make_backend(), await make_backend()
    tid = task_id()
    waiting = asyncio.ensure_future(waiter.wait(tid, timeout=WAIT))
    await worker.store(tid, meta(tid, "STARTED"), expires=None)
    await worker.store(tid, meta(tid, "PROGRESS", {"done": 1}), expires=None)
    await worker.store(tid, meta(tid, "SUCCESS", 4), expires=None)
    # Had a non-ready state ended the wait, it would return that state instead.
    assert await waiting == meta(tid, "SUCCESS", 4)


async def test_many_waiters(make_backend: MakeBackend) -> None:
    waiter, worker = await make_backend(), await make_backend()
    ids = [task_id() for _ in range(5)]
    waits = [asyncio.ensure_future(waiter.wait(tid, timeout=WAIT)) for tid in ids for _ in "ab"]
    for i, tid in enumerate(reversed(ids)):
        await worker.store(tid, meta(tid, "SUCCESS", i), expires=None)
    results = await asyncio.gather(*waits)
    assert [r["task_id"] for r in results] == [tid for tid in ids for _ in "ab"]


async def test_wait_times_out(backend: ResultBackend) -> None:
    tid = task_id()
    await backend.store(tid, meta(tid, "STARTED"), expires=None)
    with pytest.raises(errors.TimeoutError):
        await backend.wait(tid, timeout=0.2)
    with pytest.raises(TimeoutError):  # also the builtin, as Celery users catch it
        await backend.wait(task_id(), timeout=0.05)


async def test_records_expire(backend: ResultBackend) -> None:
    tid, kept = task_id(), task_id()
    await backend.store(tid, meta(tid, "SUCCESS", 1), expires=0.2)
    await backend.store(kept, meta(kept, "SUCCESS", 2), expires=None)
    assert await backend.get(tid) is not None
    deadline = asyncio.get_running_loop().time() + WAIT
    while await backend.get(tid) is not None:
        assert asyncio.get_running_loop().time() < deadline, "the record never expired"
        await asyncio.sleep(0.05)
    assert await backend.get(kept) == meta(kept, "SUCCESS", 2)
    with pytest.raises(errors.TimeoutError):
        await backend.wait(tid, timeout=0.1)


async def test_forget(backend: ResultBackend) -> None:
    tid = task_id()
    await backend.store(tid, meta(tid, "SUCCESS", 1), expires=None)
    await backend.forget(tid)
    assert await backend.get(tid) is None
    await backend.forget(tid)  # forgetting twice is fine


async def test_close_fails_waiters(make_backend: MakeBackend) -> None:
    backend = await make_backend()
    waiting = asyncio.ensure_future(backend.wait(task_id(), timeout=WAIT))
    await asyncio.sleep(0)  # usually registers first; a wait after close fails alike
    await backend.close()
    with pytest.raises(errors.BrokerError):
        await waiting


# -- event logs and streams ----------------------------------------------------------------


async def collect(stream: Any, into: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async for event in stream:
        into.append(event)
    return into


async def test_a_stream_sees_every_event_in_order_then_the_final_record(
    make_backend: MakeBackend,
) -> None:
    reader, worker = await make_backend(), await make_backend()
    tid = task_id()
    seen: list[dict[str, Any]] = []
    streaming = asyncio.ensure_future(collect(reader.stream(tid, timeout=WAIT), seen))
    # Nothing stored yet (PENDING): the stream yields nothing until the first event.
    await worker.store_event(tid, meta(tid, "STARTED"), expires=60)
    # Attached before the burst below, whatever the transport's latency.
    await eventually(lambda: seen, WAIT, "the first event")
    # A burst written back to back, faster than any reader re-reads: none may be lost.
    for i in range(200):
        await worker.store_event(tid, meta(tid, "PROGRESS", {"current": i}), expires=60)
    await worker.store(tid, meta(tid, "SUCCESS", "done"), expires=60)
    events = await asyncio.wait_for(streaming, WAIT)
    assert events[0] == meta(tid, "STARTED")
    assert [e["result"]["current"] for e in events[1:-1]] == list(range(200))
    assert events[-1] == meta(tid, "SUCCESS", "done")
    assert await reader.get(tid) == meta(tid, "SUCCESS", "done")


async def test_a_late_stream_starts_from_the_latest_state(make_backend: MakeBackend) -> None:
    reader, worker = await make_backend(), await make_backend()
    tid = task_id()
    for i in range(5):
        await worker.store_event(tid, meta(tid, "PROGRESS", {"current": i}), expires=60)
    seen: list[dict[str, Any]] = []
    streaming = asyncio.ensure_future(collect(reader.stream(tid, timeout=WAIT), seen))
    await eventually(lambda: seen, WAIT, "the latest state")
    await worker.store_event(tid, meta(tid, "PROGRESS", {"current": 5}), expires=60)
    await worker.store(tid, meta(tid, "FAILURE", {"exc_type": "ValueError"}), expires=60)
    events = await asyncio.wait_for(streaming, WAIT)
    assert [e["status"] for e in events] == ["PROGRESS", "PROGRESS", "FAILURE"]
    assert [e["result"] for e in events[:2]] == [{"current": 4}, {"current": 5}]


async def test_a_stream_of_a_finished_task_is_its_final_record(backend: ResultBackend) -> None:
    tid = task_id()
    await backend.store_event(tid, meta(tid, "PROGRESS", {"current": 1}), expires=60)
    await backend.store(tid, meta(tid, "SUCCESS", 3), expires=60)
    assert await collect(backend.stream(tid, timeout=WAIT), []) == [meta(tid, "SUCCESS", 3)]
    plain = task_id()  # never streamed: its record alone
    await backend.store(plain, meta(plain, "SUCCESS", 4), expires=60)
    assert await collect(backend.stream(plain, timeout=WAIT), []) == [meta(plain, "SUCCESS", 4)]


async def test_a_stream_times_out_without_a_final_state(backend: ResultBackend) -> None:
    tid = task_id()
    await backend.store_event(tid, meta(tid, "PROGRESS", {"current": 1}), expires=60)
    seen: list[dict[str, Any]] = []
    with pytest.raises(errors.TimeoutError):
        await collect(backend.stream(tid, timeout=0.3), seen)
    assert seen == [meta(tid, "PROGRESS", {"current": 1})]


async def test_an_event_is_a_record_too_and_final_states_are_refused(
    backend: ResultBackend,
) -> None:
    tid = task_id()
    await backend.store_event(tid, meta(tid, "PROGRESS", {"current": 2}), expires=60)
    assert await backend.get(tid) == meta(tid, "PROGRESS", {"current": 2})  # Celery reads this
    with pytest.raises(ValueError, match="final state"):
        await backend.store_event(tid, meta(tid, "SUCCESS", 1), expires=60)
    await backend.forget(tid)
    assert await backend.get(tid) is None
    seen: list[dict[str, Any]] = []  # the event log went too: a stream finds nothing
    with pytest.raises(errors.TimeoutError):
        await collect(backend.stream(tid, timeout=0.1), seen)
    assert seen == []


# -- counters and leases (KeyValueBackend) ---------------------------------------------------


class Clock:
    """A wall clock the test moves, for backends that take one (``TAKES_CLOCK``)."""

    def __init__(self) -> None:
        self.at = time.time()

    def __call__(self) -> float:
        return self.at


async def key_value(make_backend: MakeBackend, clock: Clock | None = None) -> KeyValueBackend:
    backend = await (make_backend() if clock is None else make_backend(clock=clock))
    assert isinstance(backend, KeyValueBackend)
    return backend


def takes_clock(request: pytest.FixtureRequest) -> bool:
    return request.node.callspec.params["make_backend"] in TAKES_CLOCK


async def test_counters_count_atomically(make_backend: MakeBackend) -> None:
    """Callers racing on one counter (two instances, as two workers) each get a different
    value: how many of a group's tasks ended is never counted twice."""
    one, two = await key_value(make_backend), await key_value(make_backend)
    key = f"count-{uuid.uuid4().hex}"
    assert await one.get_counter(key) == 0
    values = await asyncio.gather(
        *(backend.incr(key, expires=60) for _ in range(50) for backend in (one, two))
    )
    assert sorted(values) == list(range(1, 101))
    assert await two.get_counter(key) == 100
    assert await one.incr(key, by=5) == 105
    assert await one.incr(key, by=-6) == 99
    await two.delete_counter(key)
    assert await one.get_counter(key) == 0
    await two.delete_counter(key)  # deleting twice is fine
    assert await one.incr(key) == 1


async def test_counters_expire(make_backend: MakeBackend, request: pytest.FixtureRequest) -> None:
    key, kept = f"count-{uuid.uuid4().hex}", f"count-{uuid.uuid4().hex}"
    if takes_clock(request):
        clock = Clock()
        backend = await key_value(make_backend, clock)
        assert await backend.incr(key, expires=10) == 1
        await backend.incr(kept)
        clock.at += 9
        assert await backend.incr(key, expires=10) == 2  # kept 10 s from now again
        clock.at += 9
        assert await backend.get_counter(key) == 2
        clock.at += 2
    else:  # by the server's clock
        backend = await key_value(make_backend)
        assert await backend.incr(key, expires=0.2) == 1
        await backend.incr(kept)
        await eventually(lambda: _is_zero(backend.get_counter(key)), WAIT, "the counter to expire")
    assert await backend.get_counter(key) == 0
    assert await backend.incr(key) == 1  # an expired counter starts again from 0
    assert await backend.get_counter(kept) == 1


async def _is_zero(value: Any) -> bool:
    return await value == 0


async def test_revoked_ids_are_kept_until_their_end_and_seen_by_every_connection(
    make_backend: MakeBackend,
) -> None:
    one, two = await key_value(make_backend), await key_value(make_backend)
    now = time.time()
    soon, later, past = now + 300, now + 900, now - 5
    ids = [f"task-{uuid.uuid4().hex}" for _ in range(3)]
    await one.add_revoked(ids[:2], soon)
    await one.add_revoked([ids[1]], later)  # a later end wins...
    await two.add_revoked([ids[1]], soon)  # ...and an earlier one does not shorten it
    await two.add_revoked([ids[2]], past)  # already over: never listed
    await two.add_revoked([], later)  # nothing to add
    revoked = {k: v for k, v in (await two.revoked()).items() if k in ids}
    assert revoked == {ids[0]: pytest.approx(soon), ids[1]: pytest.approx(later)}
    assert one.keeps_revokes and two.keeps_revokes


async def test_a_lease_has_one_holder_at_a_time(make_backend: MakeBackend) -> None:
    one, two = await key_value(make_backend), await key_value(make_backend)
    name = f"lease-{uuid.uuid4().hex}"
    # Racing holders (as several beat processes starting at once): exactly one wins.
    racers = [(backend, f"holder-{n}") for n, backend in enumerate([one, two] * 10)]
    taken = await asyncio.gather(*(b.acquire_lease(name, holder, 30) for b, holder in racers))
    assert taken.count(True) == 1
    winner = racers[taken.index(True)][1]
    assert await two.acquire_lease(name, winner, 30)  # renewing
    assert not await one.acquire_lease(name, "someone-else", 30)
    await one.release_lease(name, "someone-else")  # not theirs: nothing happens
    assert not await one.acquire_lease(name, "someone-else", 30)
    await two.release_lease(name, winner)
    assert await one.acquire_lease(name, "someone-else", 30)  # free at once
    await one.release_lease(name, "someone-else")
    await one.release_lease(name, "someone-else")  # releasing twice is fine


async def test_a_lease_expires_and_renewing_extends_it(
    make_backend: MakeBackend, request: pytest.FixtureRequest
) -> None:
    name = f"lease-{uuid.uuid4().hex}"
    if takes_clock(request):
        clock = Clock()
        backend = await key_value(make_backend, clock)
        assert await backend.acquire_lease(name, "first", 10)
        clock.at += 6
        assert await backend.acquire_lease(name, "first", 10)  # now held until +16
        clock.at += 6
        assert not await backend.acquire_lease(name, "second", 10)
        clock.at += 5
        assert await backend.acquire_lease(name, "second", 30)
    else:  # by the server's clock: a short lease, polled
        backend = await key_value(make_backend)
        assert await backend.acquire_lease(name, "first", 30)
        assert await backend.acquire_lease(name, "first", 0.2)  # renewed, with a new ttl
        assert not await backend.acquire_lease(name, "second", 0.2)
        await eventually(
            lambda: backend.acquire_lease(name, "second", 30), WAIT, "the lease to expire"
        )
    assert not await backend.acquire_lease(name, "first", 30)


async def test_leases_and_counters_check_their_arguments(make_backend: MakeBackend) -> None:
    backend = await key_value(make_backend)
    with pytest.raises(ValueError, match="ttl"):
        await backend.acquire_lease("lease", "holder", 0)
    with pytest.raises(ValueError, match="holder"):
        await backend.acquire_lease("lease", "", 10)
    with pytest.raises(ValueError, match="expires"):
        await backend.incr("count", expires=-1)
