"""The scheduler: while it leads, it sends each periodic task's runs as they come due.

One pass (:meth:`Scheduler.tick`) renews or seeks the lead, reads the entries in force, and
for each entry sends the runs whose time has come, then says how long it may sleep. Runs are
the schedule's own times, never the time of the last send, so an interval does not drift and
a restart does not restart its countdown; their bookkeeping lives in the result store
(:mod:`celeriac.beat.store`).

Runs that come due while no scheduler leads are sent by the next leader. Those delayed by no
more than twice ``beat_failover_timeout`` (a failover) are each sent; older ones were
*missed* (every scheduler was down) and follow the entry's policy, ``missed`` (the
``beat_missed_runs`` setting by default):

- ``once`` (Celery's behaviour): the missed runs become one run, sent for the newest of
  them, unless a run that is not late follows them (that one is the run now);
- ``all``: every missed run is sent, oldest first (at most :data:`CATCH_UP_PER_PASS` a pass);
- ``skip``: missed runs are not sent.

A paused entry's runs pass unsent and are not caught up when it resumes.
``beat_cron_starting_deadline`` (Celery's) drops crontab runs older than it first.

Each message is the one Celery's beat sends (the task by name, the entry's args, kwargs and
options) with Celery 5.7's ``celery_beat_task`` header, ``periodic_task_name`` (as
django-celery-beat's) and ``celeriac_beat_run``, the run's scheduled time; its task id is
derived from the entry and that time, so a run sent again (see :mod:`celeriac.beat.store`)
has the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

from celeriac import sending
from celeriac.beat.entries import Entry, entry_from_config
from celeriac.beat.leadership import Clock, Leadership
from celeriac.beat.store import BeatStore, Runs, merged
from celeriac.connections import address
from celeriac.errors import BackendUnreachable, BrokerUnreachable, ConfigurationError
from celeriac.transports.backend import KeyValueBackend
from celeriac.transports.urls import redacted

if TYPE_CHECKING:
    from celeriac.app import Celery

logger = logging.getLogger("celeriac.beat")

#: Most runs of one entry sent in one pass under the ``all`` policy; the rest follow at once.
CATCH_UP_PER_PASS = 100
#: How many of the runs it sent a scheduler remembers (:attr:`Scheduler.sent`).
RECENT_RUNS = 1000
#: A run is late (missed, not merely delayed by a failover) once it is overdue by more than
#: this many times ``beat_failover_timeout``: a failover takes up to one timeout, and the
#: dead leader's last pass may have come a quarter of one before it died.
LATE_AFTER = 2
#: Most due runs looked through for one entry (a per-second entry missed for a week is 604,800).
MOST_DUE_RUNS = 2_000_000
#: Task ids of runs: uuid5 of the entry's name and the run's time, in this namespace.
RUN_NAMESPACE = uuid.UUID("6f0c5a52-8a8e-4c1e-9d1a-2f4f3c1b7e10")


class RunBook(Protocol):
    """Where the runs are claimed and the stored entries read: the result store
    (:class:`~celeriac.beat.store.BeatStore`) or RabbitMQ's lead tokens
    (:class:`~celeriac.beat.rabbitmq.TokenRunBook`)."""

    async def runs(self, name: str, now_ms: int) -> Runs: ...

    async def claim(self, name: str, slot_ms: int) -> int: ...

    async def mark_sent(self, name: str, slot_ms: int, *, sent: bool = True) -> None: ...

    async def entries(self) -> dict[str, Entry]: ...


class Lead(Protocol):
    """Who sends: a lease in the result store (:class:`~celeriac.beat.leadership.Leadership`)
    or RabbitMQ's single active consumer (:class:`~celeriac.beat.rabbitmq.TokenLeadership`)."""

    every: float
    terms: int

    @property
    def leading(self) -> bool: ...

    def due_in(self) -> float: ...

    async def keep(self) -> bool: ...

    async def resign(self) -> None: ...


class SystemClock:
    """Wall time and monotonic time of the machine."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class Run:
    """One run sent: which entry, its scheduled time, the task id it was sent under."""

    entry: str
    at: datetime
    task_id: str


def configured_entries(app: Celery) -> dict[str, Entry]:
    """The entries of ``beat_schedule`` (each checked: a bad one is an error naming it),
    once the app is finalized: its ``on_after_configure``/``on_after_finalize`` receivers
    add theirs with ``add_periodic_task``, as Celery projects do."""
    app.finalize()
    return {name: entry_from_config(name, spec) for name, spec in app.conf.beat_schedule.items()}


#: Result stores that can keep a scheduler's state (counters, a lease, documents).
STATE_STORE_SCHEMES = ("redis", "rediss", "sqlite", "memory")


def check_state_store(app: Celery) -> None:
    """Refuse, before anything connects, a deployment with nowhere to keep the schedule's
    state: a result store that keeps nothing by key on a broker other than RabbitMQ (which
    keeps it itself). A scheduler (or a ``-B`` worker) that started and sent nothing would
    look fine."""
    url = app.conf.effective_result_backend()
    if url.partition(":")[0] in STATE_STORE_SCHEMES:
        return
    if app.conf.effective_broker_url().partition(":")[0] in ("amqp", "amqps"):
        return
    raise ConfigurationError(
        f"periodic tasks keep their schedule and leader in the result store, and"
        f" {redacted(url)} keeps nothing by key: set result_backend to a Redis URL or an"
        " embedded SQLite file (sqlite:///path) shared by every scheduler"
    )


def run_id(entry: str, at_ms: int) -> str:
    """The task id of the entry's run at ``at_ms``: the same whoever sends it."""
    return str(uuid.uuid5(RUN_NAMESPACE, f"{entry}\n{at_ms}"))


def zone_of(app: Celery) -> tzinfo:
    """The zone crontabs are read in, as Celery chooses it: the ``timezone`` setting; without
    one, UTC, or with ``enable_utc=False`` the machine's own zone (``TZ``, else
    ``/etc/localtime``), with its DST rules."""
    import zoneinfo

    if app.conf.timezone:
        return zoneinfo.ZoneInfo(app.conf.timezone)
    if app.conf.enable_utc:
        return UTC
    return local_zone()


def local_zone() -> tzinfo:
    """The machine's zone with its rules (a fixed offset would get DST wrong half the year)."""
    import zoneinfo

    name = os.environ.get("TZ", "").removeprefix(":")
    if name:
        with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
            return zoneinfo.ZoneInfo(name)
    with contextlib.suppress(OSError, ValueError), open("/etc/localtime", "rb") as file:
        return zoneinfo.ZoneInfo.from_file(file, key="localtime")
    return UTC


def default_holder() -> str:
    """A name for this scheduler, unique among processes: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """Sends the runs of ``app``'s periodic tasks while it holds the lead."""

    def __init__(
        self, app: Celery, *, clock: Clock | None = None, holder: str | None = None
    ) -> None:
        self.app = app
        self.clock: Clock = clock or SystemClock()
        self.holder = holder or default_holder()
        self.zone = zone_of(app)
        self.configured = configured_entries(app)
        check_state_store(app)
        conf = app.conf
        self.failover_timeout = conf.beat_failover_timeout
        self.max_interval = conf.beat_max_loop_interval
        self.policy = conf.beat_missed_runs
        self.cron_deadline = conf.beat_cron_starting_deadline
        self._store: RunBook | None = None
        self._leadership: Lead | None = None
        self._runs: dict[str, Runs] = {}
        self._term = 0
        #: The runs this scheduler sent, newest last: the latest :data:`RECENT_RUNS` (a
        #: scheduler runs for months; the store keeps the counts).
        self.sent: deque[Run] = deque(maxlen=RECENT_RUNS)

    async def open(self) -> None:
        """Connect, and choose where the lead and the runs are kept: the result store when
        it keeps things by key, else RabbitMQ (check_state_store allowed nothing else)."""
        if self._store is not None:
            return
        conn = await self.app.connection()
        if isinstance(conn.backend, KeyValueBackend):
            store = BeatStore(conn.backend)
            self._leadership = Leadership(
                store.backend, self.holder, self.failover_timeout, self.clock
            )
            self._store = store
            return
        from celeriac.beat.rabbitmq import rabbitmq_state

        url = self.app.conf.effective_broker_url()
        self._store, self._leadership = rabbitmq_state(url, self.failover_timeout, self.clock)

    @property
    def store(self) -> RunBook:
        assert self._store is not None, "open() first"
        return self._store

    @property
    def leadership(self) -> Lead:
        assert self._leadership is not None, "open() first"
        return self._leadership

    async def close(self) -> None:
        if self._leadership is not None:
            await self._leadership.resign()

    async def run(self, stopping: asyncio.Event) -> None:
        """Pass after pass until ``stopping`` is set; the lead is given up at the end."""
        await self.open()
        unreachable = False
        try:
            while not stopping.is_set():
                try:
                    wait = await self.tick()
                    unreachable = False
                except (BackendUnreachable, BrokerUnreachable) as exc:
                    if not unreachable:
                        logger.warning("beat: %s; trying again", exc)
                    unreachable = True
                    wait = self.leadership.every
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
        finally:
            await self.close()

    async def tick(self) -> float:
        """One pass; the seconds until the next one is needed."""
        await self.open()
        leadership = self.leadership
        if not await leadership.keep():
            return leadership.due_in()
        if leadership.terms != self._term:  # what this scheduler knew of the runs is stale
            self._term = leadership.terms
            self._runs.clear()
        entries = await self.entries()
        now = self.clock.time()
        wait = min(self.max_interval, leadership.due_in())
        for entry in entries.values():
            if not leadership.leading:
                break
            wait = min(wait, await self._pass(entry, now))
        for gone in set(self._runs) - set(entries):
            del self._runs[gone]
        return max(0.0, wait)

    async def entries(self) -> dict[str, Entry]:
        """The entries in force: ``beat_schedule``'s, replaced by stored ones by name."""
        return merged(self.configured, await self.store.entries())

    # -- one entry ---------------------------------------------------------------------------

    async def _pass(self, entry: Entry, now: float) -> float:
        """Send the entry's due runs; the seconds until its next run."""
        runs = self._runs.get(entry.name)
        if runs is None:
            runs = await self.store.runs(entry.name, _ms(now))
        if runs.in_doubt:
            runs = await self._resend(entry, runs)
        due = self._due(entry, runs.claimed, now)
        if due:
            runs = await self._send_due(entry, runs, due, now)
        self._runs[entry.name] = runs
        following = entry.schedule.next_run(_time(runs.claimed), self.zone)
        if following is None:
            return self.max_interval
        return following.timestamp() - now

    def _due(self, entry: Entry, claimed: int, now: float) -> list[int]:
        """The entry's runs after ``claimed`` up to ``now``, oldest first."""
        due: list[int] = []
        at = _time(claimed)
        for _ in range(MOST_DUE_RUNS):
            following = entry.schedule.next_run(at, self.zone)
            if following is None or following.timestamp() > now:
                break
            due.append(_ms(following.timestamp()))
            at = following
        else:
            logger.warning("beat: %s has more than %d due runs", entry.name, MOST_DUE_RUNS)
        return due

    async def _send_due(self, entry: Entry, runs: Runs, due: list[int], now: float) -> Runs:
        """Claim and send the runs the policy keeps; claim the others without sending."""
        if not entry.enabled:  # paused: its runs pass unsent, and are not caught up later
            return await self._claim_and_send(entry, runs, due[-1], send=False)
        if self.cron_deadline is not None and _is_crontab(entry):
            kept = [slot for slot in due if slot >= _ms(now - self.cron_deadline)]
            if not kept:
                logger.info(
                    "beat: %s's runs up to %s are past beat_cron_starting_deadline: skipped",
                    entry.name,
                    _iso(due[-1]),
                )
                return await self._claim_and_send(entry, runs, due[-1], send=False)
            due = kept
        late_before = _ms(now - LATE_AFTER * self.failover_timeout)
        late = [slot for slot in due if slot < late_before]
        policy = entry.missed or self.policy
        if late and policy != "all":
            on_time = len(late) < len(due)
            send_newest = policy == "once" and not on_time
            logger.info(
                "beat: %s missed %d run(s) (policy %r): %s",
                entry.name,
                len(late),
                policy,
                "one sent for the newest" if send_newest else "skipped",
            )
            runs = await self._claim_and_send(entry, runs, late[-1], send=send_newest)
            due = due[len(late) :]
            if runs.claimed != late[-1]:
                return runs
        for slot in due[:CATCH_UP_PER_PASS]:
            runs = await self._claim_and_send(entry, runs, slot, send=True)
            if runs.claimed != slot:  # taken by another, or the lead was lost
                break
        return runs

    async def _claim_and_send(self, entry: Entry, runs: Runs, slot: int, *, send: bool) -> Runs:
        if not self.leadership.leading:
            return runs
        before = await self.store.claim(entry.name, slot)
        if before >= slot:  # another scheduler took it: what it did is what counts
            logger.info("beat: the run of %s at %s was already taken", entry.name, _iso(slot))
            return await self.store.runs(entry.name, slot)
        claimed = Runs(slot, runs.sent)
        if not send:
            await self.store.mark_sent(entry.name, slot, sent=False)
            return Runs(slot, slot)
        return await self._send(entry, claimed, slot)

    async def _resend(self, entry: Entry, runs: Runs) -> Runs:
        """A run claimed by a scheduler that died before the broker confirmed it: sent
        again, under the same id, since it may never have been sent."""
        logger.warning(
            "beat: the run of %s at %s was taken but its sending never confirmed (its"
            " scheduler stopped): sending it again under the same task id",
            entry.name,
            _iso(runs.claimed),
        )
        return await self._send(entry, runs, runs.claimed)

    async def _send(self, entry: Entry, runs: Runs, slot: int) -> Runs:
        at = _time(slot)
        logger.info("beat: sending %s (%s) for its run at %s", entry.name, entry.task, at)
        try:
            task_id, published = await self._publish(entry, slot)
        except (BrokerUnreachable, BackendUnreachable):
            self._runs[entry.name] = runs  # in doubt: sent again by the next pass
            raise
        except Exception as exc:  # the entry's own fault: report it, do not retry forever
            logger.error(
                "beat: %s's run at %s cannot be sent: %s: %s",
                entry.name,
                at,
                type(exc).__name__,
                exc,
            )
            await self.store.mark_sent(entry.name, slot, sent=False)
            return Runs(slot, slot)
        if not published:
            logger.info("beat: %s's run at %s was queued already", entry.name, at)
        await self.store.mark_sent(entry.name, slot, sent=published)
        if published:
            self.sent.append(Run(entry.name, at, task_id))
        return Runs(slot, slot)

    async def _publish(self, entry: Entry, slot: int) -> tuple[str, bool]:
        """The run's message, as ``send_task`` builds it, published once per run: under the
        entry's name with the run's time, so a run sent again is not queued twice where the
        broker can tell (Redis, SQLite; not RabbitMQ)."""
        options: dict[str, Any] = dict(entry.options)
        headers: Mapping[str, Any] = options.pop("headers", None) or {}
        options["headers"] = {
            **headers,
            "celery_beat_task": True,
            "periodic_task_name": entry.name,
            "celeriac_beat_run": _iso(slot),
        }
        task_id = run_id(entry.name, slot)
        plan = sending.plan(self.app.conf, entry.task, **options)
        envelope = sending.build(plan, task_id, list(entry.args), dict(entry.kwargs))
        conn = await self.app.connection()
        address(envelope, conn.backend)
        published = await conn.broker.publish_once(
            plan.queue,
            envelope,
            key=f"celeriac-beat:{entry.name}",
            sequence=slot,
            priority=plan.priority,
            eta=plan.visible_at,
        )
        if published and conn.sent_events is not None:
            await conn.sent_events.send(conn.broker, [envelope], plan.queue)
        return task_id, published


def _is_crontab(entry: Entry) -> bool:
    return bool(entry.schedule.to_json().get("__type__") == "crontab")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _iso(ms: int) -> str:
    return _time(ms).isoformat()
