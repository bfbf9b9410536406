"""kombu's Redis data layout: key names, priority lists and the JSON envelope. Pure, no I/O.

A queue shared with real Celery must look exactly as kombu's Redis transport leaves it, so
this module is the one place that knows that layout (``celery-protocol`` README, section b):

* a message is a JSON *envelope* LPUSHed onto a list; its body is base64 text, its headers
  and properties are in clear, and ``properties.delivery_tag`` names it while it is held;
* a queue is four lists, one per priority step: ``q``, ``q\\x06\\x163``, ``q\\x06\\x166`` and
  ``q\\x06\\x169``; consumers pop the bare list first, so on Redis a *lower* Celery priority
  is more urgent. celeriac's priority (0-9, higher first) is stored as ``9 - priority``;
* a held message is a field of the ``unacked`` hash (``[envelope, exchange, routing_key]``)
  plus a member of the ``unacked_index`` sorted set scored by unix time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celeriac.errors import ProtocolError
from celeriac.ids import uuid as new_tag
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.serialization import json_text, json_value
from celeriac.transports.broker import MAX_PRIORITY, MIN_PRIORITY
from celeriac.transports.redis.similar_json import Template, differing_keys

SEPARATOR = "\x06\x16"
#: kombu's default ``priority_steps``: the list a message goes to is the largest step <= it.
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
UNACKED_MUTEX = "unacked_mutex"
BINDING_PREFIX = "_kombu.binding."

#: Envelope properties that belong to the transport, not to the message.
_TRANSPORT_PROPERTIES = frozenset({"delivery_info", "body_encoding", "delivery_tag", "priority"})


class EnvelopeError(ValueError):
    """A list element that is not a kombu envelope celeriac can read."""


@dataclass(slots=True)
class RedisMessage:
    """An envelope read off a list, with what the transport needs to hold and restore it."""

    envelope: Envelope
    tag: str
    priority: int  # celeriac's: 0-9, higher first
    redelivered: bool
    raw: dict[str, Any]  # the decoded JSON envelope, to restore it unchanged but for flags


def celery_priority(priority: int) -> int:
    """celeriac's priority (higher first) as kombu's Redis priority (lower first)."""
    return MAX_PRIORITY - priority


def list_key(queue: str, priority: int) -> str:
    """The list a message of celeriac ``priority`` goes to."""
    step = _step(celery_priority(priority))
    return queue if step == 0 else f"{queue}{SEPARATOR}{step}"


def consume_keys(queues: list[str]) -> list[str]:
    """Lists to pop, most urgent first: priority step first, then queue (kombu's order)."""
    return [q if step == 0 else f"{q}{SEPARATOR}{step}" for step in PRIORITY_STEPS for q in queues]


def binding_member(queue: str) -> str:
    """The ``_kombu.binding.<queue>`` member a Celery worker adds for its queue."""
    return f"{queue}{SEPARATOR}{SEPARATOR}{queue}"


def _step(celery_priority: int) -> int:
    return max(step for step in PRIORITY_STEPS if step <= celery_priority)


def encode(envelope: Envelope, queue: str, priority: int, tag: str | None = None) -> str:
    """The JSON list element for ``envelope`` published to ``queue``, as kombu writes it."""
    try:  # kombu's JSON: a datetime header travels as its marker
        return json_text(_document(envelope, queue, priority, tag or new_tag()))
    except (TypeError, ValueError) as exc:
        raise _not_json(exc) from exc


def encode_many(
    envelopes: Sequence[Envelope], queue: str, priority: int, tags: Sequence[str]
) -> list[str]:
    """``encode`` of each envelope with its tag, for one queue and priority.

    Envelopes built together (``protocol.build_task_messages``) share most of their header
    and property values; those are written once, into a template (:mod:`similar_json`).
    """
    if len(envelopes) < 2:
        return [encode(e, queue, priority, t) for e, t in zip(envelopes, tags, strict=True)]
    first = envelopes[0]
    varying_headers = differing_keys([e.headers for e in envelopes])
    varying_properties = differing_keys([e.properties for e in envelopes])
    if (
        varying_headers is None
        or varying_properties is None
        or any(
            e.content_type != first.content_type or e.content_encoding != first.content_encoding
            for e in envelopes
        )
    ):
        return [encode(e, queue, priority, t) for e, t in zip(envelopes, tags, strict=True)]
    varying_properties = [k for k in varying_properties if k not in _TRANSPORT_PROPERTIES]
    slots = [
        ("body",),
        *(("headers", key) for key in varying_headers),
        *(("properties", key) for key in varying_properties),
        ("properties", "delivery_tag"),
    ]
    try:
        render = Template(_document(first, queue, priority, tags[0]), slots).render
        texts = []
        for envelope, tag in zip(envelopes, tags, strict=True):
            values = [_base64(envelope.body)]
            headers, properties = envelope.headers, envelope.properties
            values += [headers[key] for key in varying_headers]
            values += [properties[key] for key in varying_properties]
            values.append(tag)
            texts.append(render(values))
        return texts
    except (TypeError, ValueError) as exc:
        raise _not_json(exc) from exc


def _document(envelope: Envelope, queue: str, priority: int, tag: str) -> dict[str, Any]:
    properties = {k: v for k, v in envelope.properties.items() if k not in _TRANSPORT_PROPERTIES}
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    properties["priority"] = celery_priority(priority)
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = tag
    return {
        "body": _base64(envelope.body),
        "content-encoding": envelope.content_encoding,
        "content-type": envelope.content_type,
        "headers": envelope.headers,
        "properties": properties,
    }


def _base64(body: bytes) -> str:
    return binascii.b2a_base64(body, newline=False).decode("ascii")


def _not_json(exc: Exception) -> TypeError:
    return TypeError(f"message headers or properties are not JSON: {exc}")


def decode(payload: str | bytes, tag: str) -> RedisMessage:
    """Read a list element; ``tag`` is the one it is held under (the transport chose it).

    The one place where broker bytes become a message, so it is total: whatever Redis hands
    over (bytes that are not UTF-8 or not JSON, wrong types anywhere, kombu type markers
    that do not decode), it returns a message or raises :class:`EnvelopeError` with the
    reason, never anything else. The transport dead-letters on that one exception.
    """
    try:
        return _decode(payload, tag)
    except EnvelopeError:
        raise
    except Exception as exc:  # a check below missed a case: still data, never a crash
        raise EnvelopeError(f"unreadable envelope ({type(exc).__name__}: {exc})") from None


def _decode(payload: str | bytes, tag: str) -> RedisMessage:
    try:
        raw = json_value(payload)
    except UnicodeDecodeError as exc:
        raise EnvelopeError(
            f"not a JSON envelope: not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    except ProtocolError as exc:  # a kombu marker ({"__type__": ...}) that does not decode
        detail = str(exc).removeprefix("body has a ")  # the serializer speaks of bodies
        raise EnvelopeError(
            f"a type marker in its headers or properties does not decode: {detail}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"not a JSON envelope: {exc}") from None
    if not isinstance(raw, dict):
        raise EnvelopeError(f"envelope is a JSON {type(raw).__name__}, not an object")
    properties = raw.get("properties")
    headers = raw.get("headers")
    if not isinstance(properties, dict):
        raise EnvelopeError("envelope has no 'properties' object")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise EnvelopeError("envelope 'headers' is not an object")
    body = raw.get("body")
    if not isinstance(body, str):
        raise EnvelopeError("envelope has no 'body' string")
    if properties.get("body_encoding") == "base64":
        try:
            data = base64.b64decode(body)  # as kombu: line breaks and all
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeError(f"body is not valid base64: {exc}") from None
    else:
        data = body.encode("utf-8")
    info = properties.get("delivery_info")
    redelivered = bool(info.get("redelivered")) if isinstance(info, dict) else False
    priority = _priority(properties.get("priority"))
    message_properties = {k: v for k, v in properties.items() if k not in _TRANSPORT_PROPERTIES}
    message_properties["priority"] = priority  # celeriac's, whatever Celery's number was
    envelope = Envelope(
        body=data,
        content_type=_text(raw.get("content-type")),
        content_encoding=_text(raw.get("content-encoding")),
        headers=headers,
        properties=message_properties,
    )
    return RedisMessage(envelope, tag, priority, redelivered, raw)


def delivery_tag(raw: dict[str, Any]) -> str | None:
    """The envelope's ``properties.delivery_tag`` if the message can be held under it: a
    non-empty string that can go back to Redis (a lone surrogate other than
    ``surrogateescape``'s cannot, see :func:`celeriac.transports.redis.client.pack`); else None."""
    properties = raw.get("properties")
    tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
    if not isinstance(tag, str) or not tag:
        return None
    try:
        tag.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return tag


def redelivered(raw: dict[str, Any], tag: str) -> str:
    """The envelope to put back on its list: flagged redelivered, as kombu restores it."""
    headers = raw.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    properties = raw.setdefault("properties", {})
    if isinstance(properties, dict):
        info = properties.get("delivery_info")
        if isinstance(info, dict):
            info["redelivered"] = True
        properties.setdefault("delivery_tag", tag)
    return json_text(raw)


def unacked_entry(payload: bytes, queue: str) -> bytes:
    """The ``unacked`` hash value for a held message: ``[envelope, exchange, routing_key]``
    (the envelope's bytes as they came off the list)."""
    return b"[" + payload + b', "", ' + json_text(queue).encode() + b"]"


def priority_of(raw: dict[str, Any]) -> int:
    """celeriac's priority of a decoded envelope."""
    properties = raw.get("properties")
    return _priority(properties.get("priority") if isinstance(properties, dict) else None)


def _priority(value: object) -> int:
    """celeriac's priority from kombu's ``properties.priority`` (absent: Celery's default 0)."""
    try:
        number: int = int(value)  # type: ignore[call-overload]  # kombu's int(): "7", 7.0, True
    except (TypeError, ValueError):
        number = 0
    return MAX_PRIORITY - min(max(number, MIN_PRIORITY), MAX_PRIORITY)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
