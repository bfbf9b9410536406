"""Direct exchanges on Redis as kombu emulates them: a binding table and one list per queue.

Redis has no exchanges, so kombu keeps each exchange's bindings in a set,
``_kombu.binding.<exchange>``, whose members are ``<routing key>\\x06\\x16<pattern>\\x06\\x16
<queue>``. Publishing to a direct exchange reads that set and LPUSHes the message onto the
list of every queue bound with the message's routing key; a message no queue is bound for
is dropped, as AMQP drops an unroutable one. This is how a Celery worker sends its
remote-control replies (exchange ``reply.celery.pidbox``, routing key the client's inbox),
so a celeriac subscription of kind ``direct`` keeps this layout to receive them, and a
celeriac broadcast of kind ``direct`` follows it to reach a Celery client's reply queue.

A subscription is a reply inbox: its queue, ``<routing key>.<exchange>``, as kombu names a
reply queue, is bound as kombu 5.7 binds a queue that expires: the member is added and the
exchange's deadline in ``_kombu.binding_deadlines`` raised to an hour from the server's
clock, in one script, and refreshed while the subscription lives (kombu's sweeper deletes a
table whose deadline passed). It is consumed with a blocking pop on a connection of its own.
Closing removes the member and deletes the lists, as kombu's client does when it is done.
``global_keyprefix`` goes in front of every key; binding members name queues without it,
as kombu's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from celeriac.errors import BrokerError, BrokerUnreachable
from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import ExchangeKind, Subscription
from celeriac.transports.redis import fanout, kombu
from celeriac.transports.redis.client import Client, Connection, Pipeline, ReplyError, Script
from celeriac.transports.redis.connection import refusal
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
BINDING_DEADLINES = "_kombu.binding_deadlines"
#: kombu's MIN_BINDING_TTL (ms): the least a binding table lives unrefreshed; a reply
#: queue's own lifetime (x-expires, 10 s) doubled is less, so this is what kombu writes.
BINDING_TTL_MS = 60 * 60 * 1000
#: How often a subscription refreshes its binding: a third of its lifetime, as kombu does.
REFRESH_SECONDS = BINDING_TTL_MS / 1000 / 3
#: How long one blocking pop waits (seconds): the most a due refresh can wait.
POP_SECONDS = 5.0
#: Beyond ``POP_SECONDS``, how long a pop's reply may take before its connection counts as
#: dead (a connection that went away silently would otherwise block the pop forever).
_POP_GRACE = 5.0

#: kombu's REFRESH_BINDING: add member ARGV[1] to the table KEYS[1] and raise exchange
#: ARGV[2]'s deadline in KEYS[2] to ARGV[3] ms from now by the server's clock (ZADD GT,
#: so a later deadline another client set stays).
REFRESH_BINDING = Script(
    """
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"""
)


def queue_name(exchange: str, routing_key: str) -> str:
    """The queue a subscription with ``routing_key`` binds, named as kombu names a reply queue
    (``<oid>.reply.celery.pidbox``)."""
    return f"{routing_key}.{exchange}"


def binding_member(routing_key: str, queue: str) -> str:
    """The table member binding ``queue`` with ``routing_key`` (a direct binding has no
    pattern)."""
    return f"{routing_key}{kombu.SEPARATOR}{kombu.SEPARATOR}{queue}"


def bound_queues(members: list[Any], routing_key: str) -> list[str]:
    """The queues of the table ``members`` bound with ``routing_key``, each once, in order."""
    queues: dict[str, None] = {}
    for member in members:
        text = member.decode("utf-8", "surrogateescape") if isinstance(member, bytes) else member
        parts = str(text).split(kombu.SEPARATOR)
        if len(parts) == 3 and parts[0] == routing_key and parts[2]:
            queues[parts[2]] = None
    return list(queues)


def encode(envelope: Envelope, exchange: str, routing_key: str) -> str:
    """The JSON envelope kombu LPUSHes for a direct message: as a fanout one, its
    ``delivery_info`` naming the exchange and routing key, and not persistent unless the
    envelope says otherwise (Celery's replies go with ``delivery_mode`` 1)."""
    transient = Envelope(
        envelope.body,
        envelope.content_type,
        envelope.content_encoding,
        envelope.headers,
        {"delivery_mode": 1, **envelope.properties},
    )
    return fanout.encode(transient, exchange, routing_key)


def table_key(prefix: str, exchange: str) -> str:
    return f"{prefix}{kombu.BINDING_PREFIX}{exchange}"


async def publish(client: Client, prefix: str, exchange: str, envelope: Envelope, key: str) -> int:
    """Route ``envelope`` as kombu routes a direct message: onto the list of every queue
    bound with ``key``; returns how many (0: nobody is bound, and nothing is sent)."""
    members = await client.execute("SMEMBERS", table_key(prefix, exchange))
    queues = bound_queues(list(members or []), key)
    if not queues:
        return 0
    payload = encode(envelope, exchange, key)
    pipeline: Pipeline = client.pipeline()
    for queue in queues:  # kombu's priority 0, as the envelope says: the bare list
        pipeline.add("LPUSH", prefix + queue, payload)
    await pipeline.execute()
    return len(queues)


class DirectSubscription(Subscription):
    """A reply inbox: a queue bound to the exchange with the routing key, popped on a
    connection of its own."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        exchange: str,
        routing_key: str,
        kind: ExchangeKind,
    ) -> None:
        super().__init__(exchange, routing_key, kind)
        self._client = client
        self.queue = queue_name(exchange, routing_key)
        self._member = binding_member(routing_key, self.queue)
        self._table = table_key(prefix, exchange)
        self._permanent = f"{prefix}{BINDING_PERMANENT_PREFIX}{exchange}"
        self._deadlines = prefix + BINDING_DEADLINES
        self._lists = [prefix + key for key in kombu.consume_keys([self.queue])]
        self._connection: Connection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._bound = False
        self._refreshed_at = 0.0

    async def _open(self) -> None:
        self._bound = True  # even if binding fails half-way, close unbinds
        try:
            await self._refresh()
            self._connection = await self._client.connection()
        except (OSError, TimeoutError) as exc:
            raise BrokerUnreachable(
                f"cannot subscribe to {self.exchange!r} on Redis at"
                f" {redacted(self._client.url)}: {exc}"
            ) from exc
        except ReplyError as exc:  # ZADD GT needs Redis 6.2, as kombu 5.7 does
            doing = f"a subscription to {self.exchange!r}"
            raise BrokerError(refusal(self._client.url, exc, doing, "broker_url")) from exc
        self._reader = asyncio.get_running_loop().create_task(self._read(self._connection))

    async def _refresh(self) -> None:
        """Bind (again): the member, and the exchange's deadline an hour ahead."""
        keys = [self._table, self._deadlines]
        await self._client.run_script(
            REFRESH_BINDING, keys, [self._member, self.exchange, BINDING_TTL_MS]
        )
        self._refreshed_at = time.monotonic()

    async def _read(self, connection: Connection) -> None:
        try:
            while not self.closed:
                if time.monotonic() - self._refreshed_at >= REFRESH_SECONDS:
                    await self._refresh()
                popped = await connection.execute(
                    "BRPOP", *self._lists, POP_SECONDS, timeout=POP_SECONDS + _POP_GRACE
                )
                if popped is not None:
                    self._received(popped[1])
        except (OSError, TimeoutError, ReplyError) as exc:
            if not self.closed:
                self.fail(
                    BrokerUnreachable(
                        f"the subscription to {self.exchange!r} lost its connection to Redis"
                        f" at {redacted(self._client.url)} ({exc}): subscribe again"
                    )
                )
        except Exception as exc:  # the client's own (a refused login on reconnecting)
            if not self.closed:
                self.fail(exc)

    def _received(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        try:
            envelope, _, _ = fanout.decode(data, self.routing_key)
        except kombu.EnvelopeError as exc:
            log.warning("skipping a message on %r: %s", self.queue, exc)
            return
        # On its queue, it is this subscription's: bound with its routing key alone.
        self.deliver(envelope, self.routing_key)

    async def _close(self) -> None:
        """Unbind first (nothing more is routed here), then stop the pop (what it may have
        just taken is dropped, as anything unread is on close) and delete the lists."""
        if self._bound:
            with contextlib.suppress(OSError, TimeoutError, ReplyError):
                pipeline = self._client.pipeline()
                pipeline.add("SREM", self._table, self._member)
                pipeline.add("SREM", self._permanent, self._member)
                await pipeline.execute()
        if self._connection is not None:
            self._client.forget(self._connection)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._bound:
            with contextlib.suppress(OSError, TimeoutError, ReplyError):
                await self._client.execute("DEL", *self._lists)
