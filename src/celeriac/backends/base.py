"""The result backend contract: store and read Celery-format result records.

A record ("meta") is the dict Celery stores for a task: ``status``, ``result``,
``traceback``, ``children``, ``date_done``, ``task_id`` and, when set, ``parent_id`` and
``group_id``. Backends store it as JSON text, exactly as Celery's Redis backend does, so
that records are readable by Celery clients on shared stores.

Public methods encode and validate here; transports implement the ``_`` primitives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from celeriac.serialization import json_text, json_value
from celeriac.states import READY_STATES

Meta = dict[str, Any]


class ResultBackend(ABC):
    """Base class of every result store. Instances are bound to the loop they connected on."""

    schemes: tuple[str, ...] = ()

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})

    async def connect(self) -> None:
        """Open connections; called once before any other method."""

    async def close(self) -> None:
        """Release connections; wake every waiter with an error."""

    async def store(self, task_id: str, meta: Meta, *, expires: float | None) -> None:
        """Write the task's current record; ``expires`` is seconds to keep it (None: forever)."""
        # kombu's JSON, as Celery's backend: byte for byte its records, datetimes included.
        data = json_text(meta).encode()
        await self._set(task_id, data, meta["status"] in READY_STATES, expires)

    async def get(self, task_id: str) -> Meta | None:
        """The stored record, or None while nothing is stored (PENDING)."""
        data = await self._get(task_id)
        return None if data is None else _decode(data)

    async def wait(self, task_id: str, timeout: float | None) -> Meta:
        """Return the record once it is in a ready state.

        Raises :class:`celeriac.errors.TimeoutError` after ``timeout`` seconds. Waiting uses
        the transport's notifications; it never polls faster than the transport needs.
        """
        return _decode(await self._wait(task_id, timeout))

    async def forget(self, task_id: str) -> None:
        """Delete the record."""
        await self._delete(task_id)

    @abstractmethod
    async def _set(self, task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        """Store ``data`` under ``task_id`` (replacing it) and wake waiters when ``ready``."""

    @abstractmethod
    async def _get(self, task_id: str) -> bytes | None:
        """Stored bytes, or None when absent or expired."""

    @abstractmethod
    async def _wait(self, task_id: str, timeout: float | None) -> bytes:
        """Block (without blocking the loop) until a ready record is stored; return it."""

    @abstractmethod
    async def _delete(self, task_id: str) -> None:
        """Remove the record if present."""


def _decode(data: bytes) -> Meta:
    meta = json_value(data)
    if not isinstance(meta, dict):
        raise ValueError(f"result record is not a JSON object: {data[:80]!r}")
    return meta
