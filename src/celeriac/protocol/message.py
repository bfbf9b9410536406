"""Celery message protocol v2: build and parse task messages. Pure functions, no I/O.

What real Celery 5 puts on the wire is described in ``shared/celery-protocol/README.md``
(section a) and captured in its fixtures, which the unit tests use as vectors.

A task message is an :class:`Envelope` whose body is ``[args, kwargs, embed]`` and whose
headers carry the task metadata (19 standard keys, plus any custom ``headers=`` merged at
the top level). ``build_task_message`` writes exactly what Celery 5.7's producer writes;
``parse_task_message`` needs only the ``task`` and ``id`` headers, as Celery's worker does,
and raises :class:`~celeriac.errors.ProtocolError` with one reason for anything malformed.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celeriac.errors import ProtocolError
from celeriac.protocol import serialization
from celeriac.protocol.envelope import Envelope

#: The 19 headers Celery 5.7's producer always sends, in its order.
STANDARD_HEADERS: tuple[str, ...] = (
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
)

#: The keys of the body's third element (``embed``), in Celery's order.
EMBED_KEYS: tuple[str, ...] = ("callbacks", "errbacks", "chain", "chord")

#: Celery's ``argsrepr_maxsize`` and ``kwargsrepr_maxsize``.
ARGSREPR_MAXSIZE = 1024

_STANDARD = frozenset(STANDARD_HEADERS)
_origin_cache: tuple[int, str] | None = None


@dataclass(slots=True)
class TaskMessage:
    """A parsed task message: what a worker needs to run it, and every header it came with."""

    task: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    retries: int
    eta: datetime | None
    expires: datetime | None
    time_limit: float | None
    soft_time_limit: float | None
    root_id: str | None
    parent_id: str | None
    group: str | None
    group_index: int | None
    ignore_result: bool
    origin: str | None
    reply_to: str | None
    priority: int | None
    headers: dict[str, Any]


# -- building ------------------------------------------------------------------------------


def build_task_message(
    task: str,
    task_id: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    serializer: str = "json",
    eta: datetime | None = None,
    expires: datetime | None = None,
    retries: int = 0,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    group: str | None = None,
    group_index: int | None = None,
    ignore_result: bool = False,
    origin: str | None = None,
    reply_to: str = "",
    priority: int = 0,
    shadow: str | None = None,
    headers: Mapping[str, Any] | None = None,
    callbacks: list[dict[str, Any]] | None = None,
    errbacks: list[dict[str, Any]] | None = None,
    chain: list[dict[str, Any]] | None = None,
    chord: dict[str, Any] | None = None,
    replaced_task_nesting: int | None = 0,
) -> Envelope:
    """Build the message Celery 5.7 would publish for this call, byte for byte.

    Naive ``eta``/``expires`` are taken as UTC. ``root_id`` defaults to ``task_id`` and
    ``origin`` to ``gen<pid>@<hostname>``. Custom ``headers`` become extra top-level
    headers after the standard ones; one that reuses a standard name raises ``ValueError``.
    ``argsrepr`` is the ``repr`` of ``args`` as given (a list shows as ``[...]``, anything
    else as a tuple, as Celery does), cut to :data:`ARGSREPR_MAXSIZE` characters.
    ``replaced_task_nesting`` counts the ``Task.replace`` calls the task stands in for
    (None: 0).
    """
    if not isinstance(task, str) or not task:
        raise ValueError(f"task name must be a non-empty string, got {task!r}")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"task_id must be a non-empty string, got {task_id!r}")
    kwargs = dict(kwargs or {})
    message_headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": shadow,
        "eta": format_iso(eta) if eta is not None else None,
        "expires": format_iso(expires) if expires is not None else None,
        "group": group,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": _truncated_repr(args if isinstance(args, list) else tuple(args)),
        "kwargsrepr": _truncated_repr(kwargs),
        "origin": origin or _default_origin(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": replaced_task_nesting or 0,
        "stamped_headers": None,
        "stamps": {},
    }
    for key, value in (headers or {}).items():
        if key in _STANDARD:
            raise ValueError(
                f"custom header {key!r} would override Celery's standard {key!r} header: "
                "pass it through the matching argument, or rename the custom header"
            )
        message_headers[key] = value

    # kombu's order: correlation_id, reply_to, delivery_mode, [expiration], priority.
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": reply_to,
        "delivery_mode": 2,
    }
    if expires is not None:
        seconds_left = (_as_utc(expires) - _utcnow()).total_seconds()
        properties["expiration"] = str(max(0, round(seconds_left * 1000)))
    properties["priority"] = priority

    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    body, content_type, content_encoding = serialization.dumps(
        [list(args), kwargs, embed], serializer
    )
    return Envelope(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers=message_headers,
        properties=properties,
    )


def build_task_messages(
    task: str,
    calls: Sequence[tuple[str, Sequence[Any], Mapping[str, Any]]],
    **options: Any,
) -> list[Envelope]:
    """``build_task_message(task, task_id, args, kwargs, **options)`` for each
    ``(task_id, args, kwargs)`` of ``calls``: the same messages, made faster.

    The first message is built in full; the others copy its headers and properties and
    change only what a call changes (its id, root id unless ``root_id`` is given, argument
    reprs and body). What they share is then the very same objects, which lets a broker
    write it once for the whole batch (:mod:`celeriac.transports.redis.similar_json`).
    """
    if not calls:
        return []
    first_id, first_args, first_kwargs = calls[0]
    first = build_task_message(task, first_id, first_args, first_kwargs, **options)
    serializer = options.get("serializer", "json")
    encode = serialization.json_text if first.content_type == serialization.JSON else None
    own_root = not options.get("root_id")
    embed = {key: options.get(key) for key in EMBED_KEYS}
    envelopes = [first]
    for task_id, args, kwargs in calls[1:]:
        if not isinstance(task_id, str) or not task_id:
            raise ValueError(f"task_id must be a non-empty string, got {task_id!r}")
        kwargs = kwargs if type(kwargs) is dict else dict(kwargs)
        headers = first.headers.copy()
        headers["id"] = task_id
        if own_root:
            headers["root_id"] = task_id
        headers["argsrepr"] = _truncated_repr(args if isinstance(args, list) else tuple(args))
        headers["kwargsrepr"] = _truncated_repr(kwargs)
        properties = first.properties.copy()
        properties["correlation_id"] = task_id
        document = [list(args), kwargs, embed]
        if encode is not None:
            body = encode(document).encode("utf-8")
        else:
            body = serialization.dumps(document, serializer)[0]
        envelopes.append(
            Envelope(body, first.content_type, first.content_encoding, headers, properties)
        )
    return envelopes


def _truncated_repr(value: object) -> str:
    text = repr(value)
    if len(text) > ARGSREPR_MAXSIZE:
        return text[: ARGSREPR_MAXSIZE - 3] + "..."
    return text


def _default_origin() -> str:
    # Cached per process id: a forked child must not reuse its parent's pid.
    global _origin_cache
    pid = os.getpid()
    if _origin_cache is None or _origin_cache[0] != pid:
        _origin_cache = (pid, f"gen{pid}@{socket.gethostname()}")
    return _origin_cache[1]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- ISO 8601 ------------------------------------------------------------------------------


def format_iso(dt: datetime) -> str:
    """ISO 8601 in UTC with an explicit offset, as Celery writes ``eta``/``expires``.

    A naive datetime is taken to be UTC already.
    """
    return _as_utc(dt).isoformat()


def parse_iso(value: str | datetime | None) -> datetime | None:
    """Parse an ISO 8601 string into an aware UTC datetime; ``None`` stays ``None``.

    A string without an offset is taken to be UTC. Raises ``ValueError`` for anything
    that is not an ISO 8601 datetime.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return _as_utc(value)
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 string, got {type(value).__name__}")
    try:
        return _as_utc(datetime.fromisoformat(value))
    except OverflowError:
        raise ValueError(f"datetime out of range: {value!r}") from None


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


# -- parsing -------------------------------------------------------------------------------


def parse_task_message(envelope: Envelope, accept: Collection[str]) -> TaskMessage:
    """Parse and validate a task message; ``accept`` is a set of content types.

    Only the ``task`` and ``id`` headers are required; a missing or ``null`` optional
    header takes Celery's default. Raises :class:`~celeriac.errors.ContentDisallowed` for
    a content type not in ``accept`` and :class:`~celeriac.errors.ProtocolError` for
    anything malformed, with one reason.
    """
    headers = envelope.headers
    if not isinstance(headers, dict):
        raise ProtocolError(f"headers must be a dict, got {_type(headers)}")
    task = _required_str(headers, "task")
    task_id = _required_str(headers, "id")
    _optional_str(headers, "shadow")
    time_limit, soft_time_limit = _timelimit(headers.get("timelimit"))
    message = TaskMessage(
        task=task,
        id=task_id,
        args=[],
        kwargs={},
        embed={},
        retries=_optional_int(headers, "retries") or 0,
        eta=_optional_iso(headers, "eta"),
        expires=_optional_iso(headers, "expires"),
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        root_id=_optional_str(headers, "root_id"),
        parent_id=_optional_str(headers, "parent_id"),
        group=_optional_str(headers, "group"),
        group_index=_optional_int(headers, "group_index"),
        ignore_result=_optional_bool(headers, "ignore_result"),
        origin=_optional_str(headers, "origin"),
        reply_to=_property_str(envelope.properties, "reply_to"),
        priority=_property_int(envelope.properties, "priority"),
        headers=dict(headers),
    )
    # Headers first: a message with no task name is reported as such, whatever its body.
    body = serialization.loads(
        envelope.body, envelope.content_type, envelope.content_encoding, accept
    )
    message.args, message.kwargs, message.embed = _parse_body(body)
    return message


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _required_str(headers: dict[str, Any], key: str) -> str:
    if key not in headers:
        raise ProtocolError(f"header {key!r} is missing: a task message needs 'task' and 'id'")
    value = headers[key]
    if not isinstance(value, str):
        raise ProtocolError(f"header {key!r} must be a string, got {_type(value)}")
    if not value:
        raise ProtocolError(f"header {key!r} is an empty string")
    return value


def _optional_str(headers: dict[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(f"header {key!r} must be a string or null, got {_type(value)}")


def _optional_int(headers: dict[str, Any], key: str) -> int | None:
    value = headers.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"header {key!r} must be an integer or null, got {_type(value)}")
    if value < 0:
        raise ProtocolError(f"header {key!r} must not be negative, got {value}")
    return value


def _optional_bool(headers: dict[str, Any], key: str) -> bool:
    value = headers.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProtocolError(f"header {key!r} must be true, false or null, got {_type(value)}")
    return value


def _optional_iso(headers: dict[str, Any], key: str) -> datetime | None:
    value = headers.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(
            f"header {key!r} must be an ISO 8601 string or null, got {_type(value)}"
        )
    try:
        return parse_iso(value)
    except ValueError:
        raise ProtocolError(
            f"header {key!r} is not an ISO 8601 datetime: {_short(value)}"
        ) from None


def _timelimit(value: object) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ProtocolError(
            f"header 'timelimit' must be [hard, soft] (numbers or nulls), got {_short(value)}"
        )
    return _limit(value[0]), _limit(value[1])


def _limit(value: object) -> float | None:
    # Kept as sent (an int stays an int) so that a rebuilt message is byte-identical.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"header 'timelimit' must hold numbers or nulls, got {_type(value)}")
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise ProtocolError(
            f"header 'timelimit' must hold non-negative finite seconds, got {value!r}"
        )
    return value


def _property_str(properties: object, key: str) -> str | None:
    value = properties.get(key) if isinstance(properties, dict) else None
    return value if isinstance(value, str) else None


def _property_int(properties: object, key: str) -> int | None:
    value = properties.get(key) if isinstance(properties, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_body(body: object) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    if isinstance(body, dict):
        raise ProtocolError(
            "body is a dict, as in Celery's protocol v1: celeriac needs protocol v2 "
            "([args, kwargs, embed]); set task_protocol = 2 on the producer"
        )
    # Pickle keeps Celery's tuples, so a tuple is as good as a list here.
    if not isinstance(body, list | tuple):
        raise ProtocolError(f"body must be a list [args, kwargs, embed], got {_type(body)}")
    if len(body) != 3:
        raise ProtocolError(
            f"body must be a list of 3 items [args, kwargs, embed], got {len(body)} items"
        )
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        raise ProtocolError(f"args (body[0]) must be a list, got {_type(args)}")
    if not isinstance(kwargs, dict):
        raise ProtocolError(f"kwargs (body[1]) must be a dict, got {_type(kwargs)}")
    for key in kwargs:
        if not isinstance(key, str):
            raise ProtocolError(
                f"kwargs (body[1]) keys must be strings, got {_short(key)} ({_type(key)})"
            )
    return list(args), dict(kwargs), _parse_embed(embed)


def _parse_embed(embed: object) -> dict[str, Any]:
    if embed is None:
        return dict.fromkeys(EMBED_KEYS)
    if not isinstance(embed, dict):
        raise ProtocolError(f"embed (body[2]) must be a dict or null, got {_type(embed)}")
    for key in ("callbacks", "errbacks", "chain"):
        _signature_list(embed.get(key), key)
    chord = embed.get("chord")
    if chord is not None and not isinstance(chord, dict):
        raise ProtocolError(f"embed 'chord' must be a signature dict or null, got {_type(chord)}")
    parsed: dict[str, Any] = dict.fromkeys(EMBED_KEYS)  # Celery's keys first, in its order
    parsed.update(embed)
    return parsed


def _signature_list(value: object, key: str) -> None:
    if value is None:
        return
    if not isinstance(value, list | tuple):
        raise ProtocolError(
            f"embed {key!r} must be a list of signature dicts or null, got {_type(value)}"
        )
    for item in value:
        if not isinstance(item, dict):
            raise ProtocolError(
                f"embed {key!r} must hold signature dicts, got an item of type {_type(item)}"
            )
