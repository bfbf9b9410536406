"""``app.control``: remote control of workers, Celery's client API on Celery's wire.

``app.control.inspect().active()``, ``app.control.ping()``, ``app.control.broadcast(...)``
and the rest reach celeriac's and Celery's workers alike (the pidbox messages of
:mod:`celeriac.protocol.pidbox`). As every dual API: awaited in async code, a plain call in
sync code.

A call opens a reply inbox of its own (a direct subscription keyed by a fresh id), sends the
request and collects replies for ``timeout`` seconds, or until ``limit`` replies came (the
number of destinations, when they are named). Replies to other requests are ignored. A
cast (``reply=False``, ``revoke``'s default) sends and returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from celeriac._bridge import dual
from celeriac.errors import ProtocolError
from celeriac.ids import uuid
from celeriac.protocol import pidbox

if TYPE_CHECKING:
    from celeriac.app import Celery

logger = logging.getLogger("celeriac.control")

#: Celery's default seconds to collect replies.
DEFAULT_TIMEOUT = 1.0

Replies = list[dict[str, Any]]


class Control:
    """Remote control of the workers of ``app``'s broker (``app.control``)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def inspect(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        pattern: str | None = None,
        matcher: str | None = None,
        limit: int | None = None,
    ) -> Inspect:
        """Ask workers about themselves: ``app.control.inspect().active()``."""
        return Inspect(self, destination, timeout, pattern, matcher, limit)

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        limit: int | None = None,
        *,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Awaitable[Replies | None]:
        """Send ``command`` to the workers (all, or those named or matched); with
        ``reply``, the replies as Celery returns them: a list of ``{node: value}``."""
        return dual(
            self._broadcast(
                command, arguments, destination, reply, timeout, limit, pattern, matcher
            )
        )

    async def _broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None,
        destination: Sequence[str] | None,
        reply: bool,
        timeout: float,
        limit: int | None,
        pattern: str | None,
        matcher: str | None,
    ) -> Replies | None:
        if isinstance(destination, str):
            destination = [destination]
        conn = await self.app.connection()
        broker, conf = conn.broker, self.app.conf
        requests = pidbox.request_exchange(conf.control_exchange)
        if not reply:
            envelope = pidbox.build_request(
                command,
                arguments,
                clock=self.app.clock.forward(),
                destination=list(destination or ()) or None,
                pattern=pattern,
                matcher=matcher,
            )
            await broker.broadcast(requests, envelope, kind="fanout")
            return None
        ticket = uuid()
        reply_to = pidbox.ReplyTo(pidbox.reply_exchange(conf.control_exchange), uuid())
        if limit is None and destination:
            limit = len(destination)
        envelope = pidbox.build_request(
            command,
            arguments,
            clock=self.app.clock.forward(),
            destination=list(destination or ()) or None,
            pattern=pattern,
            matcher=matcher,
            ticket=ticket,
            reply_to=reply_to,
            timeout=timeout,
        )
        replies: Replies = []
        inbox = broker.subscribe(reply_to.exchange, routing_key=reply_to.routing_key, kind="direct")
        async with inbox:
            await broker.broadcast(requests, envelope, kind="fanout")
            deadline = time.monotonic() + timeout
            while limit is None or len(replies) < limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    received = await asyncio.wait_for(anext(inbox), remaining)
                except (TimeoutError, StopAsyncIteration):
                    break
                try:
                    answer = pidbox.parse_reply(received)
                except ProtocolError as exc:
                    logger.warning("ignored a remote-control reply: %s", exc)
                    continue
                if answer.ticket != ticket:
                    continue
                self.app.clock.adjust(answer.clock)
                replies.append({answer.node: answer.value})
        return replies

    def revoke(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        **kw: Any,
    ) -> Awaitable[Replies | None]:
        """Revoke tasks: workers will not run them; with ``terminate``, runs in progress
        stop too. Recorded in the result store (when it keeps revokes) as well as
        broadcast, so a worker that starts later refuses them too."""
        return dual(self._revoke(task_id, destination, terminate, signal, kw))

    async def _revoke(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None,
        terminate: bool,
        signal: str,
        kw: dict[str, Any],
    ) -> Replies | None:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        conn = await self.app.connection()
        if conn.backend.keeps_revokes:
            until = time.time() + self.app.conf.worker_revoke_expires
            await conn.backend.add_revoked(ids, until)
        arguments = {"task_id": task_id, "terminate": terminate, "signal": signal}
        return await self._broadcast(
            "revoke",
            arguments,
            destination,
            kw.get("reply", False),
            kw.get("timeout", DEFAULT_TIMEOUT),
            kw.get("limit"),
            kw.get("pattern"),
            kw.get("matcher"),
        )

    def terminate(
        self, task_id: str | Sequence[str], signal: str = "SIGTERM", **kw: Any
    ) -> Awaitable[Replies | None]:
        """Revoke tasks and stop their runs in progress."""
        return self.revoke(task_id, terminate=True, signal=signal, **kw)

    def revoke_by_stamped_headers(
        self,
        headers: dict[str, Any],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        **kw: Any,
    ) -> Awaitable[Replies | None]:
        """Revoke the tasks stamped with these header values (in the workers' memory)."""
        arguments = {"headers": headers, "terminate": terminate, "signal": signal}
        return self.broadcast("revoke_by_stamped_headers", arguments, destination, **kw)

    def ping(
        self, destination: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT, **kw: Any
    ) -> Awaitable[Replies | None]:
        """``[{node: {"ok": "pong"}}, ...]`` from the workers that answered."""
        return self.broadcast("ping", {}, destination, reply=True, timeout=timeout, **kw)

    def shutdown(
        self, destination: Sequence[str] | None = None, **kw: Any
    ) -> Awaitable[Replies | None]:
        """Stop the workers gracefully (they do not reply)."""
        return self.broadcast("shutdown", {}, destination, **kw)

    def pool_grow(
        self, n: int = 1, destination: Sequence[str] | None = None, **kw: Any
    ) -> Awaitable[Replies | None]:
        """Let the workers run ``n`` more tasks at once."""
        return self.broadcast("pool_grow", {"n": n}, destination, **kw)

    def pool_shrink(
        self, n: int = 1, destination: Sequence[str] | None = None, **kw: Any
    ) -> Awaitable[Replies | None]:
        """Let the workers run ``n`` fewer tasks at once."""
        return self.broadcast("pool_shrink", {"n": n}, destination, **kw)

    def add_consumer(
        self, queue: str, destination: Sequence[str] | None = None, **kw: Any
    ) -> Awaitable[Replies | None]:
        """Make the workers consume ``queue`` too."""
        arguments = {"queue": queue, "exchange": None, "exchange_type": "direct"}
        arguments["routing_key"] = None
        return self.broadcast("add_consumer", arguments, destination, **kw)

    def cancel_consumer(
        self, queue: str, destination: Sequence[str] | None = None, **kw: Any
    ) -> Awaitable[Replies | None]:
        """Make the workers stop consuming ``queue``."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, **kw)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Sequence[str] | None = None,
        **kw: Any,
    ) -> Awaitable[Replies | None]:
        """Set a task's time limits in the workers."""
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, **kw)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Sequence[str] | None = None,
        **kw: Any,
    ) -> Awaitable[Replies | None]:
        """Set a task's rate limit in the workers (``"10/s"``, ``"5/m"``; 0 or None: none),
        each worker process for itself, until it restarts (Celery's)."""
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, **kw)


class Inspect:
    """``app.control.inspect(...)``: each method returns ``{node: value}`` from the workers
    that answered, or None when none did (as Celery's)."""

    def __init__(
        self,
        control: Control,
        destination: Sequence[str] | None,
        timeout: float,
        pattern: str | None,
        matcher: str | None,
        limit: int | None,
    ) -> None:
        self.control = control
        self.destination = [destination] if isinstance(destination, str) else destination
        self.timeout = timeout
        self.pattern = pattern
        self.matcher = matcher
        self.limit = limit

    def _request(self, method: str, **arguments: Any) -> Awaitable[dict[str, Any] | None]:
        return dual(self._collect(method, arguments))

    async def _collect(self, method: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
        replies = await self.control._broadcast(
            method,
            arguments,
            self.destination,
            True,
            self.timeout,
            self.limit,
            self.pattern,
            self.matcher,
        )
        merged: dict[str, Any] = {}
        for reply in replies or ():
            merged.update(reply)
        return merged or None

    def ping(self) -> Awaitable[dict[str, Any] | None]:
        return self._request("ping")

    def active(self, safe: bool | None = None) -> Awaitable[dict[str, Any] | None]:
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> Awaitable[dict[str, Any] | None]:
        return self._request("reserved")

    def scheduled(self, safe: bool | None = None) -> Awaitable[dict[str, Any] | None]:
        return self._request("scheduled")

    def stats(self) -> Awaitable[dict[str, Any] | None]:
        return self._request("stats")

    def registered(self, *taskinfoitems: str) -> Awaitable[dict[str, Any] | None]:
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def revoked(self) -> Awaitable[dict[str, Any] | None]:
        return self._request("revoked")

    def active_queues(self) -> Awaitable[dict[str, Any] | None]:
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> Awaitable[dict[str, Any] | None]:
        return self._request("conf", with_defaults=with_defaults)

    def clock(self) -> Awaitable[dict[str, Any] | None]:
        return self._request("clock")

    def report(self) -> Awaitable[dict[str, Any] | None]:
        return self._request("report")

    def query_task(self, *ids: str) -> Awaitable[dict[str, Any] | None]:
        wanted = list(ids[0]) if len(ids) == 1 and not isinstance(ids[0], str) else list(ids)
        return self._request("query_task", ids=wanted)
