"""Celery's events (``celeryev``): what workers and clients tell monitors such as Flower and
``celery events``. Pure functions, no I/O.

An event is a flat JSON object: the sender's ``hostname``, ``utcoffset`` (hours *west* of
UTC, a float as Celery 5.7 sends it), ``pid``, ``clock`` (its Lamport clock, moved forward
per event), then the fields of its type, then ``timestamp`` (unix seconds) and ``type``
(``task-received``, ``worker-heartbeat``...), in Celery's order. It travels on the topic
exchange ``celeryev`` with the type as routing key, ``-`` written ``.``
(``worker.heartbeat``); several task events may travel as one message ``task.multi`` whose
body is a JSON list of them, as Celery's prefork worker batches them. Receivers read both
(``shared/celery-protocol/WAVE2.md`` §3).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celeriac.errors import ProtocolError
from celeriac.protocol import serialization
from celeriac.protocol.envelope import Envelope

#: What an event body may be written in (Celery's events are JSON).
ACCEPT = frozenset({"application/json"})
#: The routing key of a message carrying a list of task events.
BATCH_ROUTING_KEY = "task.multi"
#: Celery's ``resultrepr_maxsize``: a result's repr in ``task-succeeded`` is cut there.
RESULT_REPR_MAXSIZE = 1024

#: The fields each type adds to the common ones, in Celery's order (Celery 5.7).
FIELDS: dict[str, tuple[str, ...]] = {
    "task-sent": (
        "uuid",
        "root_id",
        "parent_id",
        "name",
        "args",
        "kwargs",
        "retries",
        "eta",
        "expires",
        "queue",
        "exchange",
        "routing_key",
    ),
    "task-received": (
        "uuid",
        "name",
        "args",
        "kwargs",
        "root_id",
        "parent_id",
        "retries",
        "eta",
        "expires",
    ),
    "task-started": ("uuid",),
    "task-succeeded": ("uuid", "result", "runtime"),
    "task-failed": ("uuid", "exception", "traceback"),
    "task-retried": ("uuid", "exception", "traceback"),
    "task-revoked": ("uuid", "terminated", "signum", "expired"),
    "task-rejected": ("uuid", "requeue"),
    "worker-online": (
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    ),
    "worker-offline": (
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    ),
    "worker-heartbeat": (
        "freq",
        "active",
        "processed",
        "loadavg",
        "sw_ident",
        "sw_ver",
        "sw_sys",
    ),
}


def utcoffset() -> float:
    """Hours west of UTC here now, as Celery's ``utcoffset()`` (``time.altzone`` under DST)."""
    west = time.altzone if time.daylight and time.localtime().tm_isdst > 0 else time.timezone
    return west / 3600.0


def event(
    type: str,
    fields: dict[str, Any],
    *,
    hostname: str,
    clock: int,
    timestamp: float | None = None,
    pid: int | None = None,
    offset: float | None = None,
) -> dict[str, Any]:
    """One event of ``type`` with ``fields`` (its type's extras), laid out as Celery's."""
    built: dict[str, Any] = {
        "hostname": hostname,
        "utcoffset": utcoffset() if offset is None else offset,
        "pid": os.getpid() if pid is None else pid,
        "clock": clock,
    }
    built.update(fields)
    built["timestamp"] = time.time() if timestamp is None else timestamp
    built["type"] = type
    return built


def routing_key(type: str) -> str:
    """The routing key an event of ``type`` is sent with: ``worker-online`` -> ``worker.online``."""
    return type.replace("-", ".")


def build_envelope(payload: dict[str, Any] | Sequence[dict[str, Any]], hostname: str) -> Envelope:
    """The message of one event (a dict) or of a batch (a list, sent as ``task.multi``), as
    Celery's dispatcher writes it: JSON, non-persistent, the sender in the headers."""
    data, content_type, encoding = serialization.dumps(
        payload if isinstance(payload, dict) else list(payload), "json"
    )
    return Envelope(
        data,
        content_type,
        encoding,
        headers={"hostname": hostname},
        properties={"delivery_mode": 1, "priority": 0},
    )


def parse(envelope: Envelope) -> list[dict[str, Any]]:
    """The events of a received message: one, or each of a ``task.multi`` batch (entries
    that are not objects with a ``type`` are skipped). ProtocolError if unreadable."""
    try:
        body = serialization.loads(
            envelope.body, envelope.content_type, envelope.content_encoding, ACCEPT
        )
    except Exception as exc:  # any bytes a peer sent
        raise ProtocolError(f"an event that cannot be read: {exc}") from None
    entries = body if isinstance(body, list) else [body]
    events = [e for e in entries if isinstance(e, dict) and isinstance(e.get("type"), str)]
    if not events and not isinstance(body, list):
        raise ProtocolError(f"an event is a JSON object with a type, not {body!r:.200}")
    return events


# -- each type's fields -------------------------------------------------------------------


def iso_or_none(when: datetime | None) -> str | None:
    """An ETA or expiry as Celery's events carry it: ISO 8601, or null."""
    return when.isoformat() if when is not None else None


def short_repr(value: Any, limit: int = RESULT_REPR_MAXSIZE) -> str:
    """``repr(value)`` cut at ``limit`` characters, never raising (a result whose ``repr``
    fails is shown by its type)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def task_received(
    uuid: str,
    name: str,
    args: str,
    kwargs: str,
    *,
    root_id: str | None,
    parent_id: str | None,
    retries: int,
    eta: datetime | None,
    expires: datetime | None,
) -> dict[str, Any]:
    """``task-received``'s fields; ``args``/``kwargs`` are the message's repr strings."""
    return {
        "uuid": uuid,
        "name": name,
        "args": args,
        "kwargs": kwargs,
        "root_id": root_id,
        "parent_id": parent_id,
        "retries": retries,
        "eta": iso_or_none(eta),
        "expires": iso_or_none(expires),
    }


def task_sent(
    uuid: str,
    name: str,
    args: str,
    kwargs: str,
    *,
    root_id: str | None,
    parent_id: str | None,
    retries: int,
    eta: str | None,
    expires: str | None,
    queue: str,
    exchange: str,
    routing_key: str,
) -> dict[str, Any]:
    """``task-sent``'s fields (a client's, with ``task_send_sent_event``)."""
    return {
        "uuid": uuid,
        "root_id": root_id,
        "parent_id": parent_id,
        "name": name,
        "args": args,
        "kwargs": kwargs,
        "retries": retries,
        "eta": eta,
        "expires": expires,
        "queue": queue,
        "exchange": exchange,
        "routing_key": routing_key,
    }


def task_succeeded(uuid: str, result: Any, runtime: float) -> dict[str, Any]:
    """``task-succeeded``'s fields: the result as a (cut) repr string."""
    return {"uuid": uuid, "result": short_repr(result), "runtime": float(runtime)}


def task_failed(uuid: str, exception: str, traceback: str | None) -> dict[str, Any]:
    """``task-failed``'s (and ``task-retried``'s) fields: the exception's repr and the
    formatted traceback."""
    return {"uuid": uuid, "exception": exception, "traceback": traceback}


def task_revoked(
    uuid: str, *, terminated: bool = False, signum: int | None = None, expired: bool = False
) -> dict[str, Any]:
    """``task-revoked``'s fields: expired before it started, or terminated by ``signum``."""
    return {"uuid": uuid, "terminated": terminated, "signum": signum, "expired": expired}


def task_rejected(uuid: str, requeue: bool) -> dict[str, Any]:
    """``task-rejected``'s fields."""
    return {"uuid": uuid, "requeue": requeue}


def worker_status(
    *,
    freq: float,
    active: int,
    processed: int,
    loadavg: Sequence[float],
    sw_ident: str,
    sw_ver: str,
    sw_sys: str,
) -> dict[str, Any]:
    """The fields of ``worker-online``, ``worker-heartbeat`` and ``worker-offline``."""
    return {
        "freq": float(freq),
        "active": active,
        "processed": processed,
        "loadavg": [round(float(load), 2) for load in loadavg],
        "sw_ident": sw_ident,
        "sw_ver": sw_ver,
        "sw_sys": sw_sys,
    }


def task_sent_from_headers(headers: dict[str, Any], queue: str) -> dict[str, Any]:
    """``task-sent``'s fields for a task message with these (protocol 2) headers, published
    to ``queue`` through the default exchange, as Celery's producer describes it."""
    return task_sent(
        str(headers.get("id")),
        str(headers.get("task")),
        _text(headers.get("argsrepr")),
        _text(headers.get("kwargsrepr")),
        root_id=headers.get("root_id"),
        parent_id=headers.get("parent_id"),
        retries=headers.get("retries") or 0,
        eta=headers.get("eta"),
        expires=headers.get("expires"),
        queue=queue,
        exchange="",
        routing_key=queue,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else short_repr(value)
