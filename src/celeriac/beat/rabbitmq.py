"""Periodic tasks on a deployment whose only server is RabbitMQ: the lead and the runs kept
by RabbitMQ itself.

Without a result store that keeps things by key (results over ``rpc://``, or none), the
schedulers cannot hold a lease or claim runs in one. Here RabbitMQ decides who leads: every
scheduler consumes one single-active-consumer queue
(:class:`~celeriac.transports.amqp.lead.SingleActiveLead`), and the consumer RabbitMQ serves
leads. The run counters (:class:`~celeriac.beat.store.Runs`) travel in the token messages of
that queue, which only the leader holds: claiming a run is writing the counters (a confirmed
publish) before the run is sent, so a new leader knows every run claimed before it.

Timing: the lead's AMQP heartbeat is a quarter of ``beat_failover_timeout``; a scheduler
that dies loses its connection at once and the next in line leads as soon as RabbitMQ sees
it; a hung or cut-off one is given up by RabbitMQ after two to three heartbeats, and stops
believing it leads after one. Entries stored at run time (:class:`~celeriac.beat.PeriodicTasks`)
need a result store: here, only ``beat_schedule``'s entries run. A run left in doubt by a
crash may be queued twice (RabbitMQ cannot publish once; see :mod:`celeriac.beat`).
"""

from __future__ import annotations

import contextlib
import json
import logging

from celeriac.beat.entries import Entry
from celeriac.beat.leadership import Clock
from celeriac.beat.store import Runs
from celeriac.errors import BrokerUnreachable
from celeriac.transports.amqp.lead import SingleActiveLead

logger = logging.getLogger("celeriac.beat")

#: The lead's name: its queue is ``celeriac.lead.beat``.
LEAD_NAME = "beat"
#: Seconds between rewrites of an unchanged state, well within RabbitMQ's consumer_timeout.
REFRESH_EVERY = 60.0

State = dict[str, list[int]]  # entry -> [claimed, sent, runs sent]


def merged(bodies: list[bytes]) -> State:
    """Every token's counters, merged: the newest of each (they only move forward), so the
    tokens a crash left behind agree on the state whatever their order."""
    state: State = {}
    for body in bodies:
        if not body:
            continue  # a newcomer's empty token
        try:
            runs = json.loads(body)["runs"]
        except (ValueError, KeyError, TypeError):
            logger.error("beat: a lead token that is not the scheduler's state was ignored")
            continue
        for name, counters in runs.items():
            kept = state.setdefault(name, [0, 0, 0])
            state[name] = [max(a, int(b)) for a, b in zip(kept, counters, strict=False)]
    return state


class TokenLeadership:
    """The :class:`~celeriac.beat.leadership.Leadership` interface over RabbitMQ's choice."""

    def __init__(self, lead: SingleActiveLead, failover_timeout: float, clock: Clock) -> None:
        self.lead = lead
        self.clock = clock
        self.every = failover_timeout / 4
        self.terms = 0
        self._was_leader = False
        self._next_try = float("-inf")

    @property
    def leading(self) -> bool:
        return self.lead.leading

    def due_in(self) -> float:
        return max(0.0, self._next_try - self.clock.monotonic())

    async def keep(self) -> bool:
        """Join the queue when not in it (with ``every`` between tries while RabbitMQ is out
        of reach); True while RabbitMQ serves this scheduler."""
        now = self.clock.monotonic()
        if now >= self._next_try:
            self._next_try = now + self.every
            try:
                await self.lead.start()
            except BrokerUnreachable as exc:
                if self._was_leader:
                    logger.warning("beat: leadership given up, RabbitMQ is out of reach: %s", exc)
        held = self.lead.leading
        if held and not self._was_leader:
            self.terms += 1
            logger.info("beat: %s leads: it sends the periodic tasks", self.lead.queue)
        elif self._was_leader and not held:
            logger.info("beat: %s no longer leads", self.lead.queue)
        self._was_leader = held
        return held

    async def resign(self) -> None:
        self._was_leader = False
        with contextlib.suppress(BrokerUnreachable):
            await self.lead.stop()


class TokenRunBook:
    """The run counters in the lead's tokens (see :class:`~celeriac.beat.store.BeatStore`
    for what they mean); entries cannot be stored here."""

    def __init__(self, lead: SingleActiveLead, clock: Clock) -> None:
        self.lead = lead
        self.clock = clock
        self._written_at = float("-inf")

    def _state(self) -> State:
        return merged(self.lead.tokens())

    async def _write(self, state: State) -> None:
        await self.lead.write(json.dumps({"runs": state}, sort_keys=True).encode())
        self._written_at = self.clock.monotonic()

    async def runs(self, name: str, now_ms: int) -> Runs:
        state = self._state()
        if name not in state:
            state[name] = [now_ms, now_ms, 0]
            await self._write(state)
        claimed, sent, _ = state[name]
        return Runs(claimed, sent)

    async def claim(self, name: str, slot_ms: int) -> int:
        state = self._state()
        counters = state.setdefault(name, [0, 0, 0])
        before = counters[0]
        if before < slot_ms:
            counters[0] = slot_ms
            await self._write(state)
        return before

    async def mark_sent(self, name: str, slot_ms: int, *, sent: bool = True) -> None:
        state = self._state()
        counters = state.setdefault(name, [0, 0, 0])
        counters[1] = max(counters[1], slot_ms)
        counters[2] += int(sent)
        await self._write(state)

    async def entries(self) -> dict[str, Entry]:
        """None stored: only ``beat_schedule``'s entries run without a result store. The
        tokens are rewritten now and then (RabbitMQ's consumer_timeout)."""
        if self.lead.leading and self.clock.monotonic() - self._written_at > REFRESH_EVERY:
            await self._write(self._state())
        return {}


def rabbitmq_state(
    url: str, failover_timeout: float, clock: Clock
) -> tuple[TokenRunBook, TokenLeadership]:
    """The run book and the leadership of the schedulers of the RabbitMQ at ``url``."""
    lead = SingleActiveLead(url, LEAD_NAME, heartbeat=failover_timeout / 4)
    return TokenRunBook(lead, clock), TokenLeadership(lead, failover_timeout, clock)
