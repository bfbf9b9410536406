"""A worker's remote control: it listens on Celery's pidbox exchange, runs the requests
addressed to it and replies to calls, so ``celery inspect``, Flower and ``app.control``
(Celery's or celeriac's) reach celeriac workers as they reach Celery's.

A worker hook: it starts listening once the worker consumes and stops when it stops. Each
request is handled in a task of its own (a slow command never holds up a ``ping``); the
worker's Lamport clock moves past each request's and each reply carries it forward. A
request that cannot be read is logged and dropped (a broadcast has no dead letters: it
was sent to every node, and a node cannot requeue it); an unknown method is answered with
Celery's error reply, so the caller learns that this node does not have it.

A lost subscription (the broker went away) is opened again with backoff, for as long as the
worker runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from celeriac.errors import BrokerError, BrokerUnreachable, ProtocolError
from celeriac.protocol import pidbox
from celeriac.protocol.clock import LamportClock
from celeriac.protocol.envelope import Envelope
from celeriac.worker import control as _control  # noqa: F401  (registers the commands)
from celeriac.worker import inspect as _inspect  # noqa: F401  (registers the commands)
from celeriac.worker import revokes as _revokes  # noqa: F401  (registers the commands)
from celeriac.worker.commands import COMMANDS, NO_REPLY, ControlContext
from celeriac.worker.hooks import WorkerHook

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: Backoff between attempts to subscribe again after the broker dropped the subscription.
RESUBSCRIBE_FIRST, RESUBSCRIBE_CAP = 0.5, 10.0


class Mailbox(WorkerHook):
    """The hook: one subscription to ``<control_exchange>.pidbox`` per worker process."""

    def __init__(self, clock: LamportClock) -> None:
        self.clock = clock
        self.context: ControlContext | None = None
        self._listening: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        #: Set once the subscription is open (tests and ``celeriac worker`` logs wait on it).
        self.ready = asyncio.Event()

    def worker_started(self, worker: Worker) -> None:
        assert worker.conn is not None
        self.context = ControlContext(worker, worker.conn, self.clock)
        self._listening = asyncio.get_running_loop().create_task(self._listen())

    def worker_stopping(self, worker: Worker) -> None:
        if self._listening is not None:
            self._listening.cancel()
        for handling in self._handling:
            handling.cancel()

    async def _listen(self) -> None:
        context = self.context
        assert context is not None
        conf = context.worker.app.conf
        exchange = pidbox.request_exchange(conf.control_exchange)
        delay = RESUBSCRIBE_FIRST
        while True:
            try:
                async with context.conn.broker.subscribe(exchange, kind="fanout") as requests:
                    self.ready.set()
                    delay = RESUBSCRIBE_FIRST
                    async for envelope in requests:
                        self._spawn(envelope)
                return  # the subscription was closed: the broker is closing
            except BrokerError as exc:
                self.ready.clear()
                # An outage is logged by the broker, once each way; a refusal is news.
                level = logging.DEBUG if isinstance(exc, BrokerUnreachable) else logging.WARNING
                logger.log(
                    level,
                    "%s: remote control lost its subscription (%s); subscribing again in %g s",
                    context.hostname,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(RESUBSCRIBE_CAP, delay * 2)

    def _spawn(self, envelope: Envelope) -> None:
        handling = asyncio.get_running_loop().create_task(self._handle(envelope))
        self._handling.add(handling)
        handling.add_done_callback(self._handling.discard)

    async def _handle(self, envelope: Envelope) -> None:
        context = self.context
        assert context is not None
        try:
            request = pidbox.parse_request(envelope)
        except ProtocolError as exc:
            logger.error("%s: dropped a remote-control request: %s", context.hostname, exc)
            return
        self.clock.adjust(request.clock)
        if not request.addressed_to(context.hostname):
            return
        value = await self.run(request)
        if request.is_call and value is not NO_REPLY:
            await self._reply(request, value)

    async def run(self, request: pidbox.ControlRequest) -> Any:
        """The reply value of ``request`` here: the command's, or Celery's error reply."""
        context = self.context
        assert context is not None
        found = COMMANDS.get(request.method)
        if found is None:
            logger.warning(
                "%s: remote-control command %r is not one celeriac has (answered with an error)",
                context.hostname,
                request.method,
            )
            return {"error": repr(KeyError(request.method))}
        logger.debug("%s: remote control %s %s", context.hostname, found.name, request.arguments)
        try:
            return await found.run(context, request.arguments)
        except Exception as exc:
            logger.exception("%s: remote-control command %r failed", context.hostname, found.name)
            return {"error": repr(exc)}

    async def _reply(self, request: pidbox.ControlRequest, value: Any) -> None:
        context = self.context
        assert context is not None and request.reply_to is not None and request.ticket
        envelope = pidbox.build_reply(
            context.hostname, value, ticket=request.ticket, clock=self.clock.forward()
        )
        try:
            await context.conn.broker.broadcast(
                request.reply_to.exchange,
                envelope,
                request.reply_to.routing_key,
                kind="direct",
            )
        except (BrokerError, TypeError) as exc:
            logger.error(
                "%s: could not reply to remote control %r: %s",
                context.hostname,
                request.method,
                exc,
            )
