"""The scheduler on memory://, with a clock the test moves: runs come from the schedule
(no drift), one leader among several schedulers, each run sent once whoever leads, failover
within ``beat_failover_timeout``, the missed-run policies, and Celery's message shape."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter, deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.beat import PeriodicTasks, Scheduler
from celeriac.beat.scheduler import run_id
from celeriac.errors import ConfigurationError
from celeriac.ids import uuid
from celeriac.schedules import crontab

#: Celery beat's messages as real Celery 5.7 sent them (copied from the captures).
CELERY_BEAT_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-beat"
#: 2026-03-01 00:00:00 UTC: the test's start of time.
T0 = 1_772_323_200.0


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self, at: float = T0) -> None:
        self.at = at

    def time(self) -> float:
        return self.at

    def monotonic(self) -> float:
        return self.at - T0 + 1000.0

    def advance(self, seconds: float) -> None:
        self.at += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def url() -> str:
    return f"memory://beat-{uuid()}"


def make_app(url: str, schedule: dict[str, Any], **conf: Any) -> Celery:
    app = Celery("beat-test", broker=url, set_as_current=False)
    app.conf.update(beat_schedule=schedule, **conf)
    return app


async def scheduler_on(app: Celery, clock: FakeClock, holder: str) -> Scheduler:
    scheduler = Scheduler(app, clock=clock, holder=holder)
    await scheduler.open()
    backend: Any = scheduler.store.backend
    backend.clock = clock.time  # leases and counters expire by the test's clock
    return scheduler


@pytest.fixture
async def apps() -> AsyncIterator[list[Celery]]:
    made: list[Celery] = []
    yield made
    for app in made:
        await app.close()


async def queued(app: Celery, queue: str = "celery") -> list[dict[str, Any]]:
    """The messages waiting on ``queue``, taken off it: each one's headers."""
    broker = (await app.connection()).broker
    size = (await broker.queue_sizes([queue])).get(queue, 0)
    found: list[dict[str, Any]] = []
    if not size:
        return found
    consuming = broker.consume([queue], prefetch=size)
    async with asyncio.timeout(5):
        async for delivery in consuming:
            found.append(dict(delivery.envelope.headers))
            await broker.ack(delivery)
            if len(found) == size:
                break
    await consuming.aclose()
    return found


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


EVERY_10 = {"ten": {"task": "tasks.tick", "schedule": 10.0, "args": [1, 2]}}


async def ten_due(url: str, clock: FakeClock, apps: list[Celery]) -> tuple[Celery, Scheduler]:
    """An app with EVERY_10 (failover timeout 4 s) and scheduler "a", which saw the entry at
    T0; the clock at +10, when its first run is due (not sent yet)."""
    app = make_app(url, EVERY_10, beat_failover_timeout=4.0)
    apps.append(app)
    beat = await scheduler_on(app, clock, "a")
    await beat.tick()
    clock.advance(10)
    return app, beat


async def test_interval_runs_come_from_the_schedule_not_from_the_sends(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app = make_app(url, EVERY_10, beat_failover_timeout=100.0, beat_max_loop_interval=60.0)
    apps.append(app)
    beat = await scheduler_on(app, clock, "a")
    assert await beat.tick() == pytest.approx(10.0)  # first sight: the first run is at +10
    assert beat.sent == deque()
    for late in (0.0, 3.7, 0.4, 9.9):  # each pass comes late by a different amount
        clock.at = T0 + 10 * (len(beat.sent) + 1) + late
        await beat.tick()
    assert [run.at for run in beat.sent] == [at(10), at(20), at(30), at(40)]
    clock.at = T0 + 49.9
    assert await beat.tick() == pytest.approx(0.1)
    assert len(beat.sent) == 4


async def test_a_run_is_celerys_beat_message_with_an_id_of_its_own(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app, beat = await ten_due(url, clock, apps)
    await beat.tick()
    (headers,) = await queued(app)
    assert headers["task"] == "tasks.tick"
    assert headers["celery_beat_task"] is True
    assert headers["periodic_task_name"] == "ten"
    assert headers["celeriac_beat_run"] == at(10).isoformat()
    assert headers["id"] == run_id("ten", round((T0 + 10) * 1000)) == beat.sent[0].task_id
    assert headers["argsrepr"] == "[1, 2]"  # entry args are a list, as Celery's beat sends


async def test_a_run_carries_every_header_celery_beat_puts_on_its_messages(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    """The first message real Celery 5.7 beat sent, captured on Redis, against ours."""
    captured = json.loads((CELERY_BEAT_FIXTURES / "beat-redis-task-message.json").read_text())
    app, beat = await ten_due(url, clock, apps)
    await beat.tick()
    (headers,) = await queued(app)
    assert set(captured["headers"]) <= set(headers)
    assert headers["celery_beat_task"] is captured["headers"]["celery_beat_task"] is True
    assert headers["argsrepr"] == captured["headers"]["argsrepr"] == "[1, 2]"


async def test_several_schedulers_send_each_run_once_and_take_over_within_the_timeout(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    """Three schedulers tick in random orders; the leader is killed twice (it stops
    ticking, its lease left to run out); every run is sent exactly once, and no run time
    passes without a leader for longer than beat_failover_timeout."""
    every = {"fast": {"task": "tasks.tick", "schedule": 1.0}}
    beats = []
    for name in "abc":
        app = make_app(url, every, beat_failover_timeout=4.0)
        apps.append(app)
        beats.append(await scheduler_on(app, clock, name))
    rng = random.Random(7)
    alive = list(beats)
    killed_at: list[float] = []
    taken_over_at: list[float] = []
    for step in range(600):  # 60 s in steps of 0.1 s
        clock.advance(0.1)
        for beat in rng.sample(alive, len(alive)):
            await beat.tick()
        leaders = [b for b in alive if b.leadership.leading]
        assert len(leaders) <= 1
        if killed_at and len(taken_over_at) < len(killed_at) and leaders:
            taken_over_at.append(clock.time())
        if step in (150, 380):
            (leader,) = leaders
            alive.remove(leader)
            killed_at.append(clock.time())
    runs = Counter(run.at for beat in beats for run in beat.sent)
    assert max(runs.values()) == 1
    # The entry was first seen at +0.1 s: runs at +1.1 ... +59.1, none skipped by failovers.
    times = sorted(runs)
    assert len(times) == 59
    assert times[0] == datetime.fromtimestamp(round((T0 + 1.1) * 1000) / 1000, UTC)
    assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(seconds=1)}
    for killed, took in zip(killed_at, taken_over_at, strict=True):
        assert took - killed <= 4.0
    assert len(taken_over_at) == 2


async def missed(url: str, clock: FakeClock, down: float) -> dict[str, list[datetime]]:
    """Runs sent for each policy's entry (every 10 s) after every scheduler was down for
    ``down`` seconds, with beat_failover_timeout 2 s (late: overdue by more than 4 s)."""
    schedule = {
        name: {"task": "tasks.tick", "schedule": 10.0, "missed": name}
        for name in ("once", "all", "skip")
    }
    app = make_app(url, schedule, beat_failover_timeout=2.0)
    beat = await scheduler_on(app, clock, "a")
    await beat.tick()
    await beat.close()
    clock.advance(down)
    beat = await scheduler_on(app, clock, "b")
    await beat.tick()
    sent: dict[str, list[datetime]] = {"once": [], "all": [], "skip": []}
    for run in beat.sent:
        sent[run.entry].append(run.at)
    await app.close()
    return sent


async def test_missed_runs_follow_the_policy(url: str, clock: FakeClock) -> None:
    # Down 105 s: runs +10 ... +100 missed, the newest 5 s overdue (late).
    sent = await missed(url, clock, 105)
    assert sent["once"] == [at(100)]  # Celery's: one run now, for the newest missed time
    assert sent["all"] == [at(s) for s in range(10, 101, 10)]
    assert sent["skip"] == []


async def test_a_run_that_is_not_late_is_sent_whatever_the_policy(
    clock: FakeClock,
) -> None:
    # Down 103 s: +100 is 3 s overdue (within a failover), +10 ... +90 missed.
    sent = await missed(f"memory://beat-{uuid()}", clock, 103)
    assert sent["once"] == [at(100)]  # the run on time is the one run: no extra for +90
    assert sent["all"] == [at(s) for s in range(10, 101, 10)]
    assert sent["skip"] == [at(100)]


async def test_a_run_claimed_by_a_scheduler_that_died_sending_is_sent_again_under_its_id(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app, beat = await ten_due(url, clock, apps)
    await beat.store.claim("ten", round((T0 + 10) * 1000))  # claimed; then "a" died
    clock.advance(4)
    other = await scheduler_on(app, clock, "b")
    await other.tick()
    assert [run.at for run in other.sent] == [at(10)]
    (headers,) = await queued(app)
    assert headers["id"] == run_id("ten", round((T0 + 10) * 1000))


async def test_a_run_queued_by_a_scheduler_that_died_before_marking_it_is_not_queued_again(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app, beat = await ten_due(url, clock, apps)
    slot = round((T0 + 10) * 1000)
    await beat.store.claim("ten", slot)
    entry = (await beat.entries())["ten"]
    assert await beat._publish(entry, slot) == (run_id("ten", slot), True)  # then "a" died
    clock.advance(4)
    other = await scheduler_on(app, clock, "b")
    await other.tick()
    assert other.sent == deque()  # the broker had it: not queued a second time
    assert [h["id"] for h in await queued(app)] == [run_id("ten", slot)]
    clock.advance(6)  # the next run comes as usual
    await other.tick()
    assert [run.at for run in other.sent] == [at(20)]


async def test_a_scheduler_that_lost_its_lease_sends_nothing(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app = make_app(url, EVERY_10, beat_failover_timeout=4.0)
    apps.append(app)
    paused = await scheduler_on(app, clock, "a")
    await paused.tick()
    assert paused.leadership.leading
    clock.advance(12)  # "a" was paused past its lease; "b" took over and sent +10
    other = await scheduler_on(app, clock, "b")
    await other.tick()
    assert [run.at for run in other.sent] == [at(10)]
    await paused.tick()  # "a" wakes up: its renewal is refused, it sends nothing
    assert not paused.leadership.leading
    assert paused.sent == deque()


async def test_crontab_runs_in_the_configured_zone_across_spring_forward(
    url: str, apps: list[Celery]
) -> None:
    # 2026-03-08: New York's clocks go from 02:00 EST to 03:00 EDT; 02:30 does not exist
    # that day, so the nightly run comes when the clock jumps (03:00 EDT, 07:00 UTC).
    clock = FakeClock(datetime(2026, 3, 7, 12, tzinfo=UTC).timestamp())
    app = make_app(
        url,
        {"nightly": {"task": "t", "schedule": crontab(minute=30, hour=2)}},
        timezone="America/New_York",
    )
    apps.append(app)
    beat = await scheduler_on(app, clock, "a")
    await beat.tick()
    expected = [
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),  # 02:30 EDT
        datetime(2026, 3, 10, 6, 30, tzinfo=UTC),
    ]
    for run in expected:
        clock.at = run.timestamp() - 1
        await beat.tick()
        clock.at = run.timestamp() + 0.5
        await beat.tick()
    assert [run.at for run in beat.sent] == expected


async def test_entries_changed_at_run_time_are_taken_up_without_a_restart(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app = make_app(url, EVERY_10)
    apps.append(app)
    beat = await scheduler_on(app, clock, "a")
    tasks = PeriodicTasks(app)
    await tasks.add("five", "tasks.other", 5.0, args=(3,))
    await beat.tick()
    await tasks.pause("ten")
    clock.advance(10)
    await beat.tick()
    assert [(r.entry, r.at) for r in beat.sent] == [("five", at(5)), ("five", at(10))]
    listed = {info.entry.name: info for info in await tasks.list()}
    assert listed["ten"].source == "stored over config"
    assert not listed["ten"].entry.enabled
    assert listed["ten"].next_run is None
    assert listed["five"].source == "stored"
    assert (listed["five"].total_run_count, listed["five"].last_run) == (2, at(10))
    assert listed["five"].next_run == at(15)
    await tasks.resume("ten")
    clock.advance(10)  # +20: the paused entry's +10 passed unsent and is not caught up
    await beat.tick()
    assert sorted((r.entry, r.at) for r in list(beat.sent)[2:]) == [
        ("five", at(15)),
        ("five", at(20)),
        ("ten", at(20)),
    ]
    assert await tasks.remove("five")
    assert "five" not in {info.entry.name for info in await tasks.list()}
    with pytest.raises(ConfigurationError, match="exists"):
        await tasks.add("ten", "x", 1.0)
    with pytest.raises(ConfigurationError, match="no periodic task 'nope'"):
        await tasks.pause("nope")


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"task": "t"}, "has no 'schedule'"),
        ({"task": "t", "schedule": 5, "shedule": 5}, r"unknown key\(s\) \['shedule'\]"),
        ({"task": "t", "schedule": 5, "options": {"exchange": "x"}}, "does not send"),
        ({"task": "t", "schedule": "5"}, "cannot run"),
        ({"task": "t", "schedule": 5, "missed": "twice"}, "missed='twice'"),
        ({"task": "t", "schedule": 5, "args": "ab"}, "args 'ab'"),
    ],
)
def test_a_bad_entry_is_an_error_that_names_it(spec: dict[str, Any], error: str) -> None:
    app = make_app("memory://bad", {"entry-1": spec})
    with pytest.raises(ConfigurationError, match=rf"periodic task 'entry-1' .*{error}"):
        Scheduler(app)


@pytest.mark.parametrize("backend", ["rpc://", "disabled://"])
def test_a_result_store_that_keeps_nothing_by_key_is_refused_before_anything_runs(
    backend: str,
) -> None:
    app = make_app("memory://refused", EVERY_10)
    app.conf.result_backend = backend
    with pytest.raises(ConfigurationError, match="set result_backend to a Redis URL or an"):
        Scheduler(app)


def test_rabbitmq_lead_tokens_merge_to_the_newest_counters_whatever_their_order() -> None:
    """A leader that died between publishing its state and letting go of the old one leaves
    several tokens; the next reads the newest of each counter from them all."""
    from celeriac.beat.rabbitmq import merged

    older = json.dumps({"runs": {"a": [1000, 1000, 3], "b": [50, 40, 1]}}).encode()
    newer = json.dumps({"runs": {"a": [2000, 1000, 3], "c": [7, 7, 0]}}).encode()
    expected = {"a": [2000, 1000, 3], "b": [50, 40, 1], "c": [7, 7, 0]}
    assert merged([b"", older, newer]) == merged([newer, b"", older]) == expected
    assert merged([b"not json", older]) == {"a": [1000, 1000, 3], "b": [50, 40, 1]}


async def test_entries_added_by_on_after_configure_receivers_are_sent(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    """Celery's recipe: ``add_periodic_task`` from ``on_after_configure`` (and
    ``on_after_finalize``) receivers, with a signature, extra args and options."""
    app = make_app(url, {})
    apps.append(app)

    @app.task(name="tasks.greet")
    def greet(who: str, punctuation: str = ".") -> str:
        return who + punctuation

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Celery, **kwargs: Any) -> None:
        sender.add_periodic_task(10.0, greet.s("hello"), name="hello every 10")
        sender.add_periodic_task(
            crontab(minute="*/5"), greet.s(punctuation="!"), args=("monday",), priority=7
        )

    @app.on_after_finalize.connect(weak=False)
    def more(sender: Celery, **kwargs: Any) -> None:
        sender.add_periodic_task(timedelta(seconds=20), greet.si("x"), expires=5)

    beat = await scheduler_on(app, clock, "a")
    assert sorted(beat.configured) == [
        "%tasks.greet('x')",  # an immutable signature's repr, as Celery names it
        "hello every 10",
        "tasks.greet('monday', punctuation='!')",
    ]
    entry = beat.configured["tasks.greet('monday', punctuation='!')"]
    assert (entry.args, dict(entry.kwargs), dict(entry.options)) == (
        ("monday",),
        {"punctuation": "!"},
        {"priority": 7},
    )
    assert dict(beat.configured["%tasks.greet('x')"].options) == {"expires": 5}
    app.finalize()  # again: the receivers ran once
    assert len(app.conf.beat_schedule) == 3
    await beat.tick()
    clock.advance(20)
    await beat.tick()
    assert Counter(run.entry for run in beat.sent) == {"hello every 10": 2, "%tasks.greet('x')": 1}


def test_crontabs_are_read_in_celerys_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``timezone`` first; without it UTC, or the machine's zone with enable_utc=False."""
    from celeriac.beat.scheduler import zone_of

    app = make_app("memory://zones", {})
    assert zone_of(app) is UTC
    app.conf.timezone = "Asia/Tokyo"
    assert str(zone_of(app)) == "Asia/Tokyo"
    app.conf.update(timezone=None, enable_utc=False)
    monkeypatch.setenv("TZ", "America/Sao_Paulo")
    assert str(zone_of(app)) == "America/Sao_Paulo"


async def test_a_changed_schedule_takes_effect_from_the_last_run(
    url: str, clock: FakeClock, apps: list[Celery]
) -> None:
    app = make_app(url, EVERY_10)
    apps.append(app)
    beat = await scheduler_on(app, clock, "a")
    tasks = PeriodicTasks(app)
    await beat.tick()
    clock.advance(10)
    await beat.tick()
    changed = await tasks.change("ten", schedule=30.0, args=(5,), options={"queue": "slow"})
    assert (changed.args, dict(changed.options)) == ((5,), {"queue": "slow"})
    clock.advance(20)  # +30: the old schedule's +20 and +30 do not come
    await beat.tick()
    assert [run.at for run in beat.sent] == [at(10)]
    clock.advance(10)  # +40: 30 s after the last run
    await beat.tick()
    assert [run.at for run in beat.sent] == [at(10), at(40)]
    assert [h["argsrepr"] for h in await queued(app, "slow")] == ["[5]"]
    with pytest.raises(ConfigurationError, match="cannot run"):
        await tasks.change("ten", schedule="every minute")
