"""What the key-value result stores promise periodic tasks and global rate limits: counters
that advance or start once (a scheduler's run claims), named documents (stored entries), and
a rate limit shared by every process on the store. Runs once per key-value store; two
instances of one store stand for two processes.

Stores with a clock the test moves (``TAKES_CLOCK``) are checked instant by instant; Redis
(its own clock) by what holds whatever the time, and by its server's expiry.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from celeriac.transports.backend import SHORT_WAIT, KeyValueBackend
from celeriac.transports.sqlite.backend import SQLiteBackend
from celeriac.transports.sqlite.database import SCHEMA

from .conftest import BACKENDS, TAKES_CLOCK, MakeBackend
from .test_backend_contract import WAIT, Clock, key_value

#: The contract suite's stores that keep keys (rpc:// keeps nothing on a server).
KEY_VALUE = sorted(
    name
    for name, transport in BACKENDS.items()
    if transport.backend is not None and issubclass(transport.backend, KeyValueBackend)
)

#: Every key-value store, or those whose clock the test moves.
every_store = pytest.mark.parametrize("make_backend", KEY_VALUE, indirect=True)
clocked_stores = pytest.mark.parametrize("make_backend", sorted(TAKES_CLOCK), indirect=True)


def unique(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex}"


def takes_clock(request: pytest.FixtureRequest) -> bool:
    return request.node.callspec.params["make_backend"] in TAKES_CLOCK


def whole_seconds() -> Clock:
    """A clock at a whole second, so that the times a test adds up are exact."""
    clock = Clock()
    clock.at = float(round(clock.at))
    return clock


async def until_zero(backend: KeyValueBackend, key: str) -> None:
    """Wait (polling the store, by its server's clock) for the counter to expire."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while await backend.get_counter(key) != 0:
        assert loop.time() < deadline, f"the counter {key} did not expire within {WAIT} s"
        await asyncio.sleep(0.01)


# -- advance_counter and init_counter -------------------------------------------------------


@every_store
async def test_advance_counter_raises_the_counter_and_returns_the_value_before(
    make_backend: MakeBackend,
) -> None:
    one, two = await key_value(make_backend), await key_value(make_backend)
    key = unique("claimed")
    assert await one.advance_counter(key, 5) == 0  # missing: 0, so the claim is this caller's
    assert await two.get_counter(key) == 5
    assert await two.advance_counter(key, 3) == 5  # never lowered
    assert await one.advance_counter(key, 5) == 5  # the same run again: not claimed
    assert await one.get_counter(key) == 5
    assert await two.advance_counter(key, 9) == 5
    assert await one.get_counter(key) == 9
    assert await one.incr(key, by=2) == 11  # the same counters as incr's
    assert await two.advance_counter(key, 10) == 11
    missing = unique("claimed")
    assert await one.advance_counter(missing, 0) == 0
    assert await one.advance_counter(missing, -4) == 0  # max(0, -4): nothing to raise
    assert await one.incr(missing) == 1


@every_store
async def test_racing_callers_claim_one_run_once(make_backend: MakeBackend) -> None:
    """Schedulers racing for the same run (two instances, as two processes): exactly one
    sees the counter below the run; for runs in any order, the counter ends at the latest."""
    one, two = await key_value(make_backend), await key_value(make_backend)
    key = unique("claimed")
    befores = await asyncio.gather(
        *(
            backend.advance_counter(key, 1_700_000_000_000)
            for _ in range(20)
            for backend in (one, two)
        )
    )
    assert sorted(befores) == [0] + [1_700_000_000_000] * 39
    runs = [(n * 7919) % 50 + 1 for n in range(50)]  # 1..50, shuffled
    key = unique("claimed")
    befores = await asyncio.gather(
        *(
            backend.advance_counter(key, run)
            for run, backend in zip(runs, [one, two] * 25, strict=True)
        )
    )
    assert await one.get_counter(key) == 50
    # Each caller saw the counter as the claim before its own left it (or 0): the claims
    # form one chain up to 50, and no caller saw a value above the counter's last.
    claims = {run: before for run, before in zip(runs, befores, strict=True) if before < run}
    assert 50 in claims and set(claims.values()) <= {0, *claims}
    assert len(set(claims.values())) == len(claims)
    assert all(
        before >= run for run, before in zip(runs, befores, strict=True) if run not in claims
    )


@every_store
async def test_init_counter_sets_only_a_missing_counter(make_backend: MakeBackend) -> None:
    one, two = await key_value(make_backend), await key_value(make_backend)
    key = unique("sent")
    assert await one.init_counter(key, 7) == 7
    assert await two.init_counter(key, 9) == 7  # in force already
    assert await two.get_counter(key) == 7
    assert await one.incr(key) == 8
    assert await two.init_counter(key, 0) == 8
    await one.delete_counter(key)
    assert await two.init_counter(key, 3) == 3
    zero = unique("sent")
    assert await one.incr(zero, by=0) == 0  # a counter that exists with 0 is kept
    assert await one.init_counter(zero, 5) == 0
    racing = unique("sent")
    values = await asyncio.gather(
        *(backend.init_counter(racing, n) for n in range(1, 41) for backend in (one, two))
    )
    assert len(set(values)) == 1 and values[0] in range(1, 41)  # everyone got the first one's
    assert await one.get_counter(racing) == values[0]


@every_store
async def test_advanced_and_initialised_counters_expire(
    make_backend: MakeBackend, request: pytest.FixtureRequest
) -> None:
    """``expires`` is incr's for a counter the call writes; a call that leaves the counter
    as it is leaves its expiry too."""
    raised, started, kept = unique("claimed"), unique("sent"), unique("claimed")
    if takes_clock(request):
        clock = Clock()
        backend = await key_value(make_backend, clock)
        assert await backend.advance_counter(raised, 5, expires=10) == 0
        assert await backend.init_counter(started, 4, expires=10) == 4
        assert await backend.advance_counter(kept, 1, expires=10) == 0
        clock.at += 9
        assert await backend.advance_counter(raised, 7, expires=10) == 5  # kept 10 s again
        assert await backend.advance_counter(raised, 7, expires=1) == 7  # not raised: as it was
        assert await backend.init_counter(started, 8, expires=100) == 4  # in force: as it was
        assert await backend.advance_counter(kept, 2) == 1  # no expires: the one it had
        clock.at += 1.5
        assert await backend.get_counter(raised) == 7
        assert await backend.get_counter(started) == 0
        assert await backend.get_counter(kept) == 0
        clock.at += 9
        assert await backend.get_counter(raised) == 0
    else:  # by the server's clock: short expiries, polled
        backend = await key_value(make_backend)
        assert await backend.advance_counter(raised, 5, expires=0.3) == 0
        assert await backend.advance_counter(raised, 5, expires=60) == 5  # not raised
        assert await backend.init_counter(started, 4, expires=0.3) == 4
        assert await backend.init_counter(started, 8, expires=60) == 4  # in force
        assert await backend.advance_counter(kept, 1, expires=0.3) == 0
        assert await backend.advance_counter(kept, 2) == 1
        for key in (raised, started, kept):
            await until_zero(backend, key)
    assert await backend.advance_counter(raised, 3) == 0  # an expired counter is 0
    assert await backend.init_counter(started, 8) == 8  # an expired counter is missing


@every_store
async def test_advance_and_init_check_their_expiry(make_backend: MakeBackend) -> None:
    backend = await key_value(make_backend)
    with pytest.raises(ValueError, match="expires"):
        await backend.advance_counter("count", 1, expires=0)
    with pytest.raises(ValueError, match="expires"):
        await backend.init_counter("count", 1, expires=-1)


# -- documents ------------------------------------------------------------------------------


@every_store
async def test_documents_are_put_replaced_listed_and_deleted(make_backend: MakeBackend) -> None:
    one, two = await key_value(make_backend), await key_value(make_backend)
    entries, other = unique("entries"), unique("entries")
    assert await one.documents(entries) == {}
    await one.put_document(entries, "every-minute", b'{"task": "a"}')
    await one.put_document(entries, "nightly é:*", b"\x00\xff binary")
    await one.put_document(entries, "empty", b"")
    await two.put_document(other, "every-minute", b"another collection")
    await two.put_document(entries, "every-minute", b'{"task": "b"}')  # replaced
    assert await one.documents(entries) == {
        "every-minute": b'{"task": "b"}',
        "nightly é:*": b"\x00\xff binary",
        "empty": b"",
    }
    assert await one.delete_document(entries, "every-minute") is True
    assert await two.delete_document(entries, "every-minute") is False  # gone already
    assert await two.delete_document(unique("entries"), "every-minute") is False
    assert await two.documents(other) == {"every-minute": b"another collection"}
    assert await one.delete_document(entries, "nightly é:*")
    assert await one.delete_document(entries, "empty")
    assert await two.documents(entries) == {}
    await two.put_document(entries, "again", b"1")
    assert await one.documents(entries) == {"again": b"1"}


@every_store
async def test_many_documents_and_large_ones(make_backend: MakeBackend) -> None:
    backend = await key_value(make_backend)
    entries = unique("entries")
    large = bytes(range(256)) * 1024
    await asyncio.gather(
        *(backend.put_document(entries, f"entry-{n}", str(n).encode()) for n in range(300))
    )
    await backend.put_document(entries, "large", large)
    stored = await backend.documents(entries)
    assert len(stored) == 301 and stored["entry-299"] == b"299" and stored["large"] == large


# -- acquire_rate ---------------------------------------------------------------------------


@every_store
async def test_acquire_rate_checks_its_arguments(make_backend: MakeBackend) -> None:
    backend = await key_value(make_backend)
    bad: list[tuple[Any, Any, Any, str]] = [
        (0, 1.0, 0, "limit"),
        (2.5, 1.0, 2, "limit"),
        (5, 0, 5, "period"),
        (5, -1.0, 5, "period"),
        (5, float("nan"), 5, "period"),
        (5, float("inf"), 5, "period"),
        (5, 1.0, 0, "burst"),
        (5, 1.0, 6, "burst"),
    ]
    for limit, period, burst, named in bad:
        with pytest.raises(ValueError, match=named):
            await backend.acquire_rate(unique("rate"), limit, period, burst)


@clocked_stores
async def test_a_rate_limit_allows_limit_starts_per_period_and_spaces_retries(
    make_backend: MakeBackend,
) -> None:
    """5 starts per 10 s, no burst limit, by a clock the test moves: the window is
    ``(now - 10, now]``; refused callers come back 10 / 5 = 2 s apart."""
    clock = whole_seconds()
    one = await key_value(make_backend, clock)
    two = await key_value(make_backend, clock)  # another process on the same store
    key, t0 = unique("rate"), clock.at
    for n in range(5):
        clock.at = t0 + n
        assert await (one, two)[n % 2].acquire_rate(key, 5, 10, 5) == 0.0
    clock.at = t0 + 5
    # The start at t0 leaves at t0 + 10; the next callers after it, 2 s apart.
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(5)
    assert await two.acquire_rate(key, 5, 10, 5) == pytest.approx(7)
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(9)
    clock.at = t0 + 9.5  # the start at t0 is still in the window: queued, at t0 + 16
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(6.5)
    clock.at = t0 + 10  # the window is (t0, t0 + 10]: the start at t0 left it
    assert await two.acquire_rate(key, 5, 10, 5) == 0.0
    # Full again (t0+1 .. t0+4, t0+10): t0+1 leaves at t0 + 11, but the queue is at t0 + 18.
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(8)
    clock.at = t0 + 100  # idle for long: a fresh window, and no queue
    assert [await one.acquire_rate(key, 5, 10, 5) for _ in range(6)] == [0.0] * 5 + [
        pytest.approx(10)
    ]
    # Another key is another limit.
    assert await two.acquire_rate(unique("rate"), 5, 10, 5) == 0.0


@clocked_stores
async def test_a_refusal_of_a_few_milliseconds_is_told_its_own_wait_outside_the_line(
    make_backend: MakeBackend,
) -> None:
    """A caller that comes a few milliseconds (``SHORT_WAIT`` at most) before its start is
    free (a deferred message back from the broker a little early) is told that wait, and the
    line of retry times does not move: it is not sent to the end of the line for a refusal
    shorter than a round trip through the broker."""
    clock = whole_seconds()
    one = await key_value(make_backend, clock)
    two = await key_value(make_backend, clock)
    key, t0 = unique("rate"), clock.at
    for n in range(5):
        clock.at = t0 + n
        assert await one.acquire_rate(key, 5, 10, 5) == 0.0
    clock.at = t0 + 5
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(5)  # next retry: t0 + 12
    clock.at = t0 + 10 - 2 * SHORT_WAIT  # too early by more than a few milliseconds: queued
    assert await two.acquire_rate(key, 5, 10, 5) == pytest.approx(2 + 2 * SHORT_WAIT, abs=1e-6)
    clock.at = t0 + 10 - 0.8 * SHORT_WAIT  # the line (next: t0 + 14) stays as it was
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(0.8 * SHORT_WAIT, abs=1e-6)
    clock.at = t0 + 10 - 0.001
    assert await two.acquire_rate(key, 5, 10, 5) == pytest.approx(0.001, abs=1e-6)
    clock.at = t0 + 10  # the start at t0 left the window
    assert await two.acquire_rate(key, 5, 10, 5) == 0.0
    # t0 + 1 leaves at t0 + 11, but the line is at t0 + 14: the short refusals took no place.
    assert await one.acquire_rate(key, 5, 10, 5) == pytest.approx(4)


@clocked_stores
async def test_a_short_refusal_is_not_shorter_than_one_callers_share_of_the_period(
    make_backend: MakeBackend,
) -> None:
    """At 4 starts per 8 ms, callers are 2 ms apart: a refusal of 3 ms is queued in the line
    like any other, so callers refused together are not all told to come back at once."""
    clock = whole_seconds()
    backend = await key_value(make_backend, clock)
    key, t0 = unique("rate"), clock.at
    assert [await backend.acquire_rate(key, 4, 0.008, 4) for _ in range(4)] == [0.0] * 4
    assert SHORT_WAIT > 0.003  # so that only the share (2 ms) queues a 3 ms refusal
    clock.at = t0 + 0.005  # t0's starts leave at t0 + 0.008
    waits = [await backend.acquire_rate(key, 4, 0.008, 4) for _ in range(3)]
    assert waits == [pytest.approx(w, abs=1e-6) for w in (0.003, 0.005, 0.007)]


@clocked_stores
async def test_a_burst_limit_binds_within_the_period(make_backend: MakeBackend) -> None:
    """4 starts per 10 s, at most 2 of them in any 5 s (10 * 2 / 4)."""
    clock = whole_seconds()
    backend = await key_value(make_backend, clock)
    key, t0 = unique("rate"), clock.at
    assert await backend.acquire_rate(key, 4, 10, 2) == 0.0
    assert await backend.acquire_rate(key, 4, 10, 2) == 0.0  # equal times are two starts
    assert await backend.acquire_rate(key, 4, 10, 2) == pytest.approx(5)  # burst: t0 leaves
    clock.at = t0 + 5  # the burst window (t0, t0 + 5] is empty again
    assert await backend.acquire_rate(key, 4, 10, 2) == 0.0
    clock.at = t0 + 6
    assert await backend.acquire_rate(key, 4, 10, 2) == 0.0
    clock.at = t0 + 7
    # Both windows are full: the period's frees at t0 + 10 (t0 leaves it), the burst's at
    # t0 + 10 too (t0 + 5 leaves it); the next retry time (t0 + 5 + 2.5) is earlier.
    assert await backend.acquire_rate(key, 4, 10, 2) == pytest.approx(3)
    clock.at = t0 + 10  # periods (t0, t0 + 10]: 5, 6; burst (t0 + 5, t0 + 10]: 6
    assert await backend.acquire_rate(key, 4, 10, 2) == 0.0
    # The burst window holds 6 and 10 now: 6 leaves at t0 + 11, the queue is at t0 + 12.5.
    assert await backend.acquire_rate(key, 4, 10, 2) == pytest.approx(2.5)
    clock.at = t0 + 12.5  # periods: 5, 6, 10; burst (t0 + 7.5, t0 + 12.5]: 10
    assert await backend.acquire_rate(key, 4, 10, 2) == 0.0
    assert await backend.acquire_rate(key, 4, 10, 2) == pytest.approx(15 - 12.5)  # full


@every_store
async def test_refused_callers_get_spaced_retry_times(make_backend: MakeBackend) -> None:
    """Callers refused at once (two processes) get distinct retry times, ``period / limit``
    apart, the first when the oldest start leaves: by any clock, the store's included."""
    one, two = await key_value(make_backend), await key_value(make_backend)
    key = unique("rate")
    assert [await one.acquire_rate(key, 4, 40, 4) for _ in range(4)] == [0.0] * 4
    waits = await asyncio.gather(
        *(backend.acquire_rate(key, 4, 40, 4) for _ in range(6) for backend in (one, two))
    )
    # Retry times are now + wait; the calls are a few milliseconds apart, so the waits are
    # 40, 50, 60, ... seconds, each within a second.
    ordered = sorted(waits)
    assert 39 < ordered[0] <= 40
    for before, after in itertools.pairwise(ordered):
        assert after - before == pytest.approx(10, abs=0.5)


# -- the SQLite file ------------------------------------------------------------------------


async def test_a_sqlite_file_of_an_older_version_gains_the_tables_and_sweeps_idle_limits(
    tmp_path: Path,
) -> None:
    """A file made before documents and rate limits existed (only the tables of the shared
    schema) opens, and gets them; a rate limit idle for its period is swept with its starts
    when the next backend connects."""
    path = tmp_path / "older.db"
    with closing(sqlite3.connect(path)) as older:
        older.executescript(SCHEMA)
        assert not {"celeriac_documents", "celeriac_rates"} & tables(older)
    clock = whole_seconds()
    backend = SQLiteBackend(f"sqlite:///{path}", clock=clock)
    await backend.connect()
    try:
        await backend.put_document("entries", "nightly", b"{}")
        assert await backend.documents("entries") == {"nightly": b"{}"}
        assert await backend.acquire_rate("rate", 1, 10, 1) == 0.0
        assert await backend.acquire_rate("rate", 1, 10, 1) == pytest.approx(10)
    finally:
        await backend.close()
    clock.at += 30  # after the last retry time handed out (t0 + 10) and a period more
    later = SQLiteBackend(f"sqlite:///{path}", clock=clock)
    await later.connect()
    try:
        assert await later.documents("entries") == {"nightly": b"{}"}  # documents stay
    finally:
        await later.close()
    with closing(sqlite3.connect(path)) as swept:
        assert swept.execute("SELECT COUNT(*) FROM celeriac_rates").fetchone() == (0,)
        assert swept.execute("SELECT COUNT(*) FROM celeriac_rate_starts").fetchone() == (0,)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
