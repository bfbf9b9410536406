"""Celery's remote control ("pidbox") messages: pure functions, no I/O.

A client broadcasts a request on the fanout exchange ``<control_exchange>.pidbox`` (Celery's
``celery.pidbox``); every node it addresses runs the method and, when the request is a call
(it names ``reply_to`` and a ``ticket``), sends ``{"<node>": <value>}`` to the direct exchange
``reply.<control_exchange>.pidbox`` with the client's routing key, the ticket in the headers.
These are kombu 5.7's Mailbox messages, as ``shared/celery-protocol/WAVE2.md`` §2 captures
them; the bodies are JSON.

Addressing is kombu's: a ``destination`` list names the nodes; else a ``pattern`` with a
``matcher`` (``glob``: shell wildcards; ``pcre``: a regular expression searched in the name)
picks them; else every node takes it. A request's ``expires`` header is informative only:
no Celery worker enforces it, so neither does celeriac's.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass
from typing import Any

from celeriac.errors import ProtocolError
from celeriac.protocol import serialization
from celeriac.protocol.envelope import Envelope

#: What a pidbox body may be written in (Celery's mailbox accepts its ``accept_content``;
#: its requests and replies are JSON).
ACCEPT = frozenset({"application/json"})


def request_exchange(control_exchange: str = "celery") -> str:
    """The fanout exchange requests go to: ``celery.pidbox`` by default."""
    return f"{control_exchange}.pidbox"


def reply_exchange(control_exchange: str = "celery") -> str:
    """The direct exchange replies go to: ``reply.celery.pidbox`` by default."""
    return f"reply.{control_exchange}.pidbox"


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a call's replies go: the reply exchange, keyed by the client's id."""

    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One remote-control request as a node reads it."""

    method: str
    arguments: dict[str, Any]
    destination: tuple[str, ...] | None = None
    pattern: str | None = None
    matcher: str | None = None
    ticket: str | None = None
    reply_to: ReplyTo | None = None
    #: The sender's Lamport clock, from the headers (0 when absent).
    clock: int = 0

    @property
    def is_call(self) -> bool:
        """Whether the sender waits for replies (a cast, such as ``revoke``'s default or
        ``enable_events``, gets none)."""
        return self.reply_to is not None and bool(self.ticket)

    def addressed_to(self, node: str) -> bool:
        """Whether node ``node`` runs this request (kombu's rules, module docstring)."""
        if self.destination:
            return node in self.destination
        if self.pattern and self.matcher:
            return matches(node, self.pattern, self.matcher)
        return True


def matches(node: str, pattern: str, matcher: str) -> bool:
    """kombu's ``match``: ``glob`` (shell wildcards, the whole name) or ``pcre`` (a regular
    expression found anywhere in it); another matcher matches nothing."""
    if matcher == "glob":
        return fnmatch.fnmatchcase(node, pattern)
    if matcher == "pcre":
        try:
            return re.search(pattern, node) is not None
        except re.error:
            return False
    return False


def build_request(
    method: str,
    arguments: dict[str, Any] | None = None,
    *,
    clock: int,
    destination: list[str] | None = None,
    pattern: str | None = None,
    matcher: str | None = None,
    ticket: str | None = None,
    reply_to: ReplyTo | None = None,
    timeout: float | None = None,
) -> Envelope:
    """The envelope of a request, as kombu's ``Mailbox._broadcast`` writes it: a call has a
    ticket and ``reply_to``; ``expires`` is ``now + timeout`` for a call, 0 for a cast."""
    body = {
        "method": method,
        "arguments": dict(arguments or {}),
        "destination": list(destination) if destination else None,
        "pattern": pattern,
        "matcher": matcher,
    }
    if reply_to is not None and ticket:
        body["ticket"] = ticket
        body["reply_to"] = {"exchange": reply_to.exchange, "routing_key": reply_to.routing_key}
    expires = time.time() + timeout if (ticket and timeout) else 0
    data, content_type, encoding = serialization.dumps(body, "json")
    return Envelope(
        data,
        content_type,
        encoding,
        headers={"clock": clock, "expires": expires},
        properties={"delivery_mode": 2, "priority": 0},
    )


def parse_request(envelope: Envelope) -> ControlRequest:
    """A request read from its envelope; ProtocolError names what is malformed."""
    body = _body(envelope, "request")
    if not isinstance(body, dict):
        raise ProtocolError(f"a control request is a JSON object, not {type(body).__name__}")
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise ProtocolError(f"a control request names its method: got {method!r}")
    arguments = body.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise ProtocolError(f"control {method}: arguments must be an object, not {arguments!r}")
    destination = body.get("destination")
    if destination is not None and not (
        isinstance(destination, list) and all(isinstance(d, str) for d in destination)
    ):
        raise ProtocolError(f"control {method}: destination must list node names")
    return ControlRequest(
        method=method,
        arguments=arguments,
        destination=tuple(destination) if destination else None,
        pattern=_text_or_none(body.get("pattern")),
        matcher=_text_or_none(body.get("matcher")),
        ticket=_text_or_none(body.get("ticket")),
        reply_to=_reply_to(body.get("reply_to")),
        clock=_clock(envelope.headers.get("clock")),
    )


def build_reply(node: str, value: Any, *, ticket: str, clock: int) -> Envelope:
    """A node's reply: ``{node: value}``, the ticket and the node's clock in the headers."""
    data, content_type, encoding = serialization.dumps({node: value}, "json")
    return Envelope(
        data,
        content_type,
        encoding,
        headers={"ticket": ticket, "clock": clock},
        properties={"delivery_mode": 1, "priority": 0},
    )


@dataclass(frozen=True, slots=True)
class ControlReply:
    """One node's reply as the client reads it."""

    ticket: str | None
    node: str
    value: Any
    clock: int


def parse_reply(envelope: Envelope) -> ControlReply:
    """A reply read from its envelope; ProtocolError for anything else."""
    body = _body(envelope, "reply")
    if not (isinstance(body, dict) and len(body) == 1):
        raise ProtocolError(f"a control reply is {{node: value}}, not {body!r:.200}")
    ((node, value),) = body.items()
    return ControlReply(
        _text_or_none(envelope.headers.get("ticket")),
        str(node),
        value,
        _clock(envelope.headers.get("clock")),
    )


def _body(envelope: Envelope, what: str) -> Any:
    try:
        return serialization.loads(
            envelope.body, envelope.content_type, envelope.content_encoding, ACCEPT
        )
    except Exception as exc:  # any bytes a peer sent
        raise ProtocolError(f"a control {what} that cannot be read: {exc}") from None


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _reply_to(value: object) -> ReplyTo | None:
    if not isinstance(value, dict):
        return None
    exchange, routing_key = value.get("exchange"), value.get("routing_key")
    if isinstance(exchange, str) and exchange and isinstance(routing_key, str) and routing_key:
        return ReplyTo(exchange, routing_key)
    return None


def _clock(value: object) -> int:
    try:
        return int(value) if isinstance(value, int | float | str) else 0
    except (TypeError, ValueError, OverflowError):
        return 0
