"""The envelope: one message as brokers carry it, body bytes with headers and properties.

Brokers move envelopes without reading their bodies; ``celeriac.protocol.message`` builds
and parses the task messages inside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Envelope:
    """One message as the broker stores it: body bytes plus headers and properties.

    ``headers`` are the protocol v2 task headers (``task``, ``id``, ...); ``properties`` the
    AMQP-style basic properties (``correlation_id``, ``reply_to``, ``priority``, ...). The
    ``priority`` property belongs to the transport: on delivery it may be set to the
    delivery's priority.
    """

    body: bytes
    content_type: str
    content_encoding: str
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
