"""Broadcasts on Redis as kombu makes them: PUBLISH/PSUBSCRIBE on kombu's fanout channels.

kombu emulates AMQP fanout with pub/sub (Celery's defaults ``fanout_prefix`` and
``fanout_patterns`` on): a message to exchange ``celery.pidbox`` goes to channel
``/<db>.celery.pidbox``, one with a routing key to ``/<db>.celeryev/<routing key>``, as the
same JSON envelope kombu LPUSHes onto a list, with ``delivery_info`` naming the exchange and
routing key. A Celery client's ``app.control.broadcast`` or events thus reach a celeriac
subscriber, and the other way round. ``global_keyprefix`` goes in front, as kombu's PUBLISH
puts it.

A subscriber PSUBSCRIBEs to both channels of its exchange (bare, and ``/*`` for every
routing key) and filters routing keys itself, with AMQP's topic rules, since Redis glob
patterns are not AMQP's. Pub/sub is global to the server: the ``/<db>.`` prefix is what
keeps apps on different databases apart.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
from typing import Any

from celeriac.errors import BrokerUnreachable
from celeriac.ids import uuid as new_tag
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.serialization import json_text
from celeriac.transports.broker import ExchangeKind, Subscription
from celeriac.transports.redis import kombu
from celeriac.transports.redis.client import Client, Connection, Reply
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

#: Envelope properties that belong to the transport; kombu's fanout sets priority 0.
_TRANSPORT_PROPERTIES = frozenset({"delivery_info", "body_encoding", "delivery_tag", "priority"})
_GLOB_SPECIAL = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})


def channel(prefix: str, db: int, exchange: str, routing_key: str = "") -> str:
    """kombu's channel for a broadcast (``fanout_prefix`` and ``fanout_patterns`` on)."""
    base = f"{prefix}/{db}.{exchange}"
    return f"{base}/{routing_key}" if routing_key else base


def patterns(prefix: str, db: int, exchange: str) -> list[str]:
    """The PSUBSCRIBE patterns that receive every broadcast on ``exchange``."""
    base = channel(prefix, db, exchange).translate(_GLOB_SPECIAL)
    return [base, f"{base}/*"]


def encode(envelope: Envelope, exchange: str, routing_key: str) -> str:
    """The JSON envelope kombu publishes for a fanout message."""
    properties = {k: v for k, v in envelope.properties.items() if k not in _TRANSPORT_PROPERTIES}
    properties["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    properties["priority"] = 0
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = new_tag()
    document = {
        "body": binascii.b2a_base64(envelope.body, newline=False).decode("ascii"),
        "content-encoding": envelope.content_encoding,
        "content-type": envelope.content_type,
        "headers": envelope.headers,
        "properties": properties,
    }
    try:
        return json_text(document)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"message headers or properties are not JSON: {exc}") from exc


def decode(data: bytes, channel_routing_key: str) -> tuple[Envelope, str, str | None]:
    """A published envelope: the envelope, its routing key and the exchange it names (None
    if it names none). Raises :class:`kombu.EnvelopeError` on what is not an envelope."""
    message = kombu.decode(data, "")
    envelope = message.envelope
    envelope.properties.pop("priority", None)
    info = message.raw["properties"].get("delivery_info")
    routing_key, exchange = channel_routing_key, None
    if isinstance(info, dict):
        if isinstance(info.get("routing_key"), str):
            routing_key = info["routing_key"]
        if isinstance(info.get("exchange"), str):
            exchange = info["exchange"]
    return envelope, routing_key, exchange


class RedisSubscription(Subscription):
    """One PSUBSCRIBE connection of its own; messages come as pushes on it."""

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
        db = client.address.db
        self._patterns = patterns(prefix, db, exchange)
        self._base = channel(prefix, db, exchange).encode("utf-8", "surrogateescape")
        self._connection: Connection | None = None
        self._confirmed: asyncio.Future[None] | None = None
        self._pending_confirms = len(self._patterns)
        self._watch: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        self._confirmed = asyncio.get_running_loop().create_future()
        try:
            self._connection = await self._client.subscriber(self._on_push)
            self._connection.send("PSUBSCRIBE", *self._patterns)
            await asyncio.wait_for(asyncio.shield(self._confirmed), 30.0)
        except (OSError, TimeoutError) as exc:
            raise BrokerUnreachable(
                f"cannot subscribe to {self.exchange!r} on Redis at"
                f" {redacted(self._client.url)}: {exc}"
            ) from exc
        self._watch = asyncio.get_running_loop().create_task(self._watch_connection())

    async def _watch_connection(self) -> None:
        assert self._connection is not None
        # Shielded: cancelling this watch must not cancel the connection's own future.
        await asyncio.shield(self._connection.wait_closed())
        if not self.closed:
            self.fail(
                BrokerUnreachable(
                    f"the subscription to {self.exchange!r} lost its connection to Redis at"
                    f" {redacted(self._client.url)}: subscribe again"
                )
            )

    def _on_push(self, reply: Reply) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"pmessage" and len(reply) == 4:
            self._received(reply[2], reply[3])
        elif kind == b"psubscribe":
            self._pending_confirms -= 1
            if self._pending_confirms == 0 and self._confirmed and not self._confirmed.done():
                self._confirmed.set_result(None)

    def _received(self, name: Any, data: Any) -> None:
        if not isinstance(name, bytes) or not isinstance(data, bytes):
            return
        suffix = name[len(self._base) + 1 :] if name.startswith(self._base + b"/") else b""
        try:
            envelope, routing_key, exchange = decode(
                data, suffix.decode("utf-8", "surrogateescape")
            )
        except kombu.EnvelopeError as exc:
            log.warning("skipping a broadcast on %r: %s", name, exc)
            return
        if exchange is None or exchange == self.exchange:  # another exchange "x/y" is not "x"
            self.deliver(envelope, routing_key)

    async def _close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._connection is not None:
            self._client.forget(self._connection)
            with contextlib.suppress(Exception):
                await self._connection.wait_closed()
