"""``disabled://``: no result store, Celery's default when no result backend is configured.

The default for a broker that keeps no results of its own (RabbitMQ): tasks run and their
outcomes are dropped, as in Celery, rather than written to a file nobody asked for. Asking
for a result (``get()``, ``state``, a stream) is a :class:`~celeriac.errors.ResultsNotStored`
error that says how to keep results.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NoReturn

from celeriac import errors
from celeriac.transports.backend import Meta, ResultBackend
from celeriac.transports.urls import redacted


class DisabledBackend(ResultBackend):
    """Stores nothing; every read is an error naming the fix."""

    def describe(self) -> str:
        return "not stored (no result_backend is set)"

    async def store(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        """Drop the outcome: nothing asked to keep it."""

    async def store_event(
        self, task_id: str, meta: Meta, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        """Drop the state: nothing asked to keep it."""

    async def get(self, task_id: str) -> Meta | None:
        self._not_stored(task_id)

    async def wait(self, task_id: str, timeout: float | None) -> Meta:
        self._not_stored(task_id)

    async def stream(self, task_id: str, timeout: float | None) -> AsyncIterator[Meta]:
        self._not_stored(task_id)
        yield {}  # pragma: no cover - never reached: makes this an async generator

    async def forget(self, task_id: str) -> None:
        self._not_stored(task_id)

    def _not_stored(self, task_id: str) -> NoReturn:
        broker = f"the broker {redacted(self.broker_url)}" if self.broker_url else "the broker"
        raise errors.ResultsNotStored(
            f"the result of task {task_id} was not stored: no result backend is configured"
            f" and {broker} keeps no results. To keep them, set result_backend (or"
            " CELERIAC_RESULT_BACKEND): 'rpc://' sends each result back to the caller that"
            " sent the task, 'redis://host:6379/0' or 'sqlite:///results.db' keeps it for"
            " anyone; or send with ignore_result=True and do not ask for it"
        )
