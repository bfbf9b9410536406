"""One leader among any number of schedulers: a short lease in the result store.

Every scheduler (``celeriac beat`` processes, workers started with ``-B``) tries to take the
lease; the one that holds it sends the runs, the others wait. Timing follows from one
setting, ``beat_failover_timeout`` (F, 10 s by default):

- the lease lasts ``3F/4`` and the leader renews it every ``F/4`` (three renewals per
  lease: one lost request does not cost the lead);
- the others try to take it every ``F/4``, so when a leader dies, its lease ends at most
  ``3F/4`` after its last renewal and another scheduler holds it at most ``F/4`` later: a new
  leader within F.

A leader counts its lease from the moment it *asked* for the renewal, and sends nothing once
that time has run out, or as soon as a renewal fails or is refused: a leader cut off from the
store (or paused) stops sending before another can take over. Runs are claimed one by one
as well (:mod:`celeriac.beat.store`), so even two schedulers that both think they lead
cannot send the same run twice.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

from celeriac.beat.store import LEADER_LEASE
from celeriac.errors import BackendUnreachable
from celeriac.transports.backend import KeyValueBackend

logger = logging.getLogger("celeriac.beat")

#: The part of the lease a leader keeps in hand: it stops sending this much before the end.
SAFETY_MARGIN = 0.1


class Clock(Protocol):
    """The scheduler's clocks: wall time for the schedule, monotonic time for the lease."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class Leadership:
    """Holds, renews and gives up the leader lease for ``holder``."""

    def __init__(
        self, backend: KeyValueBackend, holder: str, failover_timeout: float, clock: Clock
    ) -> None:
        self.backend = backend
        self.holder = holder
        self.clock = clock
        self.ttl = failover_timeout * 3 / 4
        self.every = failover_timeout / 4
        self._valid_until = float("-inf")
        self._next_try = float("-inf")
        self._was_leader = False
        #: How many times this scheduler became leader: what it knew of the runs from an
        #: earlier lead is stale (another leader sent runs meanwhile).
        self.terms = 0

    @property
    def leading(self) -> bool:
        """The lease is this scheduler's, with time to spare: it may send."""
        return self.clock.monotonic() < self._valid_until - self.ttl * SAFETY_MARGIN

    def due_in(self) -> float:
        """Seconds until the lease should be renewed (or taken) next."""
        return max(0.0, self._next_try - self.clock.monotonic())

    async def keep(self) -> bool:
        """Take or renew the lease when due; True while this scheduler leads. A store out
        of reach ends the lead at once (the lease runs out for the others on its own)."""
        asked_at = self.clock.monotonic()
        if asked_at < self._next_try:
            return self.leading
        self._next_try = asked_at + self.every
        try:
            held = await self.backend.acquire_lease(LEADER_LEASE, self.holder, self.ttl)
        except BackendUnreachable as exc:
            if self._was_leader:
                logger.warning(
                    "beat: leadership given up, the result store is out of reach: %s", exc
                )
            held = False
        self._valid_until = asked_at + self.ttl if held else float("-inf")
        if held and not self._was_leader:
            self.terms += 1
            logger.info("beat: %s leads: it sends the periodic tasks", self.holder)
        elif self._was_leader and not held:
            logger.info("beat: %s no longer leads", self.holder)
        self._was_leader = held
        return self.leading

    async def resign(self) -> None:
        """Give the lease up at a clean stop, so another scheduler takes over at once."""
        self._valid_until = float("-inf")
        if self._was_leader:
            self._was_leader = False
            with contextlib.suppress(BackendUnreachable):  # else it runs out on its own
                await self.backend.release_lease(LEADER_LEASE, self.holder)
