"""The rate-limit gate: whether a delivery's task may start now, and if not, when to ask
the broker to hand its message out again.

Celery's worker keeps a limited task's messages prefetched, in a queue in its memory, until
its token bucket lets each start. Those messages count against the prefetch window, sit in
the broker's unacked set (on Redis, exposed to the visibility timeout) and are stuck with a
worker that may be the one least able to run them. celeriac's worker never keeps them: a
message whose task cannot start now is given back to the broker with
:meth:`~celeriac.transports.broker.Broker.defer`, invisible until a start should be free,
so any worker can take it then. Deferring keeps the message as it is (id, retries, headers,
canvas); only its visibility changes.

Retries must not stampede: each deferred message is asked back at a time of its own, the
next of a per-task line of retry times spaced ``period / limit`` apart (after the time the
next start is free), so a backlog comes back one message per free start, not all at once.
A message that comes back to find its start taken (by a message that arrived in between)
goes to the end of the line again.

``rate_limit_scope="worker"`` (Celery's meaning): each worker process has, per task name, a
token bucket of capacity 1 refilled at ``limit / period``: starts are at least
``period / limit`` apart in each process, and ``W`` processes start up to ``W`` times the
limit. ``rate_limit_scope="global"``: the start is granted by the result store's
``acquire_rate(key, limit, period, burst)`` (Redis, SQLite), one budget shared by every
worker; it answers 0 for "start now" or the seconds to wait, already spaced per caller, and
the message is deferred by that much. A store out of reach grants nothing: the message is
deferred by ``STORE_OUTAGE_DELAY`` (one warning per outage). A result store that keeps no
shared budgets (rpc://, disabled) is refused at start for a task limited globally; a global
limit that appears later (remote control) is kept per worker there, with one warning.

A start due within ``IN_PLACE`` seconds is waited for in place rather than deferred: a
round trip through the broker costs about as much, and at a few milliseconds the message is
held no longer than a task's own bookkeeping holds it. The bucket's spacing stays strict
(the message waits for its start, it is not run early).

The clock (``RateLimits.clock``) and the in-place wait (``RateLimits.sleep``) are the
registry's, so tests replace them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.errors import BackendUnreachable
from celeriac.rates import Rate
from celeriac.transports.backend import KeyValueBackend

if TYPE_CHECKING:
    from celeriac.task import Task
    from celeriac.transports.backend import ResultBackend
    from celeriac.transports.broker import Broker, Delivery
    from celeriac.worker.rate_limits import RateLimits, TaskRate

logger = logging.getLogger("celeriac.worker")

#: A start due this soon (seconds) is waited for in place instead of deferred.
IN_PLACE = 0.005
#: A global-scope message comes back after this many seconds while the store is away.
STORE_OUTAGE_DELAY = 1.0


@dataclass(slots=True)
class _Line:
    """One task's bucket in this process: when its next start is free, and when the next
    message deferred for it is asked back."""

    rate: Rate
    next_start: float = 0.0
    next_retry: float = 0.0


class RateGate:
    """Decides, for each delivery of a limited task, start now or defer (module doc)."""

    def __init__(self, limits: RateLimits, broker: Broker, backend: ResultBackend) -> None:
        self.limits = limits
        self.broker = broker
        self.backend = backend
        self._lines: dict[str, _Line] = {}
        self._store_away = False
        #: Global limits this store cannot share, warned about (see ``_shares``).
        self._unshared: set[str] = set()

    def applies(self, task: Task[Any, Any]) -> bool:
        """Whether ``task`` has a limit here: a plain check, so that a task without one
        costs the pipeline no coroutine."""
        return self.limits.limit_of(task) is not None

    async def deferred(self, task: Task[Any, Any], task_id: str, delivery: Delivery) -> bool:
        """Whether the delivery was given back to the broker for later (its task may not
        start now); False: start it."""
        limit = self.limits.limit_of(task)
        if limit is None:
            return False
        if limit.scope == "global" and self._shares(limit):
            eta = await self._global(limit)
        else:
            eta = await self._worker(task.name, limit.rate)
        if eta is None:
            return False
        await self.broker.defer(delivery, eta)
        logger.debug(
            "task %s[%s] rate limited (%s, %s scope): back in the queue, due in %.3f s",
            task.name,
            task_id,
            limit.rate,
            limit.scope,
            eta - self.limits.clock(),
        )
        return True

    def _shares(self, limit: TaskRate) -> bool:
        """Whether the store keeps budgets shared by workers. One that does not (a global
        limit set by remote control on a task that had none at start, which the start check
        could not see) gets the worker scope instead, with one warning."""
        if isinstance(self.backend, KeyValueBackend):
            return True
        if limit.key not in self._unshared:
            self._unshared.add(limit.key)
            logger.warning(
                "rate limit %r is global, but the result store %s cannot share it between"
                " workers: this worker enforces it alone (set result_backend to a Redis or"
                " SQLite store)",
                limit.key,
                self.backend.describe(),
            )
        return False

    async def _worker(self, name: str, rate: Rate) -> float | None:
        """This process's bucket: None to start now, else when to come back."""
        line = self._lines.get(name)
        if line is None or line.rate != rate:  # a new limit starts with a full bucket
            line = self._lines[name] = _Line(rate)
        now = self.limits.clock()
        wait = line.next_start - now
        if wait <= 0:
            line.next_start = now + rate.interval
            return None
        if wait <= IN_PLACE:
            line.next_start += rate.interval
            await self.limits.sleep(wait)
            return None
        eta = max(line.next_start, line.next_retry)
        line.next_retry = eta + rate.interval
        return eta

    async def _global(self, limit: TaskRate) -> float | None:
        """The store's shared budget: None to start now, else when to come back."""
        store = self.backend
        assert isinstance(store, KeyValueBackend)  # see _shares
        for attempt in range(2):  # one more ask after a wait in place
            try:
                wait = await store.acquire_rate(limit.key, limit.limit, limit.period, limit.burst)
            except BackendUnreachable as exc:
                if not self._store_away:
                    self._store_away = True
                    logger.warning(
                        "rate limit %r (global) cannot be checked: the result store is out of"
                        " reach (%s); its tasks wait in the queue, asked again every %g s",
                        limit.key,
                        exc,
                        STORE_OUTAGE_DELAY,
                    )
                return self.limits.clock() + STORE_OUTAGE_DELAY
            if self._store_away:
                self._store_away = False
                logger.warning("rate limit %r (global): the result store answers", limit.key)
            if wait <= 0:
                return None
            if wait > IN_PLACE or attempt:
                break
            await self.limits.sleep(wait)
        return self.limits.clock() + wait
