"""Per-run settings shared by both peers, read from the environment (no framework imports).

The test process sets these for the worker subprocesses (and for itself before it configures
its client app): ``INTEROP_BROKER_URL``, ``INTEROP_RESULT_BACKEND``, ``INTEROP_KEYPREFIX``
(the ``global_keyprefix`` of broker and result keys), ``INTEROP_VISIBILITY_TIMEOUT`` and
``INTEROP_DEFAULT_QUEUE`` (``task_default_queue``, where ``delay()`` sends),
``INTEROP_MAX_PRIORITY`` (``task_queue_max_priority``, on RabbitMQ) and ``INTEROP_MARKS``
(a directory where tasks leave files, and wait for them).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

#: Longest a task waits for a marker file the test creates.
MARKER_WAIT = 30.0


def broker_url() -> str:
    return os.environ.get("INTEROP_BROKER_URL", "redis://127.0.0.1:6379/12")


def result_backend() -> str:
    return os.environ.get("INTEROP_RESULT_BACKEND", "redis://127.0.0.1:6379/13")


def default_queue() -> str:
    return os.environ.get("INTEROP_DEFAULT_QUEUE", "celery")


def keyprefix() -> str:
    return os.environ.get("INTEROP_KEYPREFIX", "")


def max_priority() -> int | None:
    """``task_queue_max_priority``: set on RabbitMQ, where priorities need it."""
    value = os.environ.get("INTEROP_MAX_PRIORITY")
    return int(value) if value else None


def broker_transport_options() -> dict[str, Any]:
    if broker_url().startswith("amqp"):
        return {}  # the key prefix and visibility timeout are Redis's
    options: dict[str, Any] = {
        "visibility_timeout": float(os.environ.get("INTEROP_VISIBILITY_TIMEOUT", "60"))
    }
    if keyprefix():
        options["global_keyprefix"] = keyprefix()
    return options


def result_backend_transport_options() -> dict[str, Any]:
    if result_backend().startswith("rpc"):
        return {}  # results travel as messages: no keys to prefix
    return {"global_keyprefix": keyprefix()} if keyprefix() else {}


def marks() -> Path:
    return Path(os.environ.get("INTEROP_MARKS", "/tmp"))


def mark(name: str, text: str) -> None:
    """Append a line to the marker file ``name`` (evidence that, and in which order, tasks ran)."""
    with open(marks() / name, "a") as f:
        f.write(text + "\n")


def wait_for_marker(name: str) -> bool:
    """Poll (bounded) for the marker file the test creates to release a waiting task."""
    deadline = time.monotonic() + MARKER_WAIT
    while time.monotonic() < deadline:
        if (marks() / name).exists():
            return True
        time.sleep(0.01)
    return False


def typed_values() -> list[Any]:
    """Values plain JSON cannot hold; kombu's JSON sends each as a ``__type__`` marker."""
    return [
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        date(2030, 1, 2),
        Decimal("1.10"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ]
