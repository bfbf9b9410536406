"""Every exception celeriac raises: its errors under one root, its control-flow signals apart.

``except CeleriacError`` catches celeriac's errors and nothing else: a signal that only asks
the worker to do something (``Retry``, ``Replace``) is not an error, so task code that
handles celeriac's errors does not swallow it by accident.

::

    CeleriacError
     ├── ConfigurationError        a setting, URL or app path is wrong, or a driver is missing
     │    ├── ResultsNotStored     a result was asked for, but no result backend is configured
     │    └── ChordsNotSupported   a chord was applied, but the result store cannot join one
     ├── BrokerError               the broker or result store could not be reached or failed
     │    ├── BrokerUnreachable    the broker is out of reach now: trying again may work
     │    ├── BackendUnreachable   the result store is out of reach now: storing again may work
     │    ├── NotLeading           a leader's write by a participant that does not lead
     │    └── ResultRejected       the result store refused a record: storing again never will
     │         └── ResultTooLarge  the record is bigger than ``result_max_size``
     ├── ProtocolError             a message is not a valid Celery protocol v2 task message
     │    ├── ContentDisallowed    its content type is not in ``accept_content``
     │    ├── MessageTooLarge      it is bigger than ``broker_max_message_size``
     │    └── CanvasError          a signature dict (chain, group, chord...) is malformed
     ├── ResourceError             a worker resource failed to start, or is not started here
     ├── NotRegistered             no task of that name is registered in the worker
     ├── TimeoutError              a result was not ready in time (a builtin TimeoutError too)
     ├── TaskError                 base of what a task's own run can end with
     │    ├── RemoteTaskError      the task failed with an exception this process cannot import
     │    ├── SoftTimeLimitExceeded   raised inside a task when its soft limit passes
     │    ├── TimeLimitExceeded    the task was stopped at ``time_limit``
     │    ├── MaxRetriesExceededError ``self.retry()`` with no retries left
     │    ├── TaskRevokedError     the task expired or was revoked and never ran
     │    └── ChordError           a chord's header task failed: its body never runs
     └── SyncWaitInTaskError       ``result.get()`` inside a task (deadlock risk), not opted out

    Control-flow signals (plain ``Exception`` subclasses, not CeleriacError)
     ├── Retry                     raised by ``self.retry()`` to ask the worker for a retry
     └── Replace                   raised by ``self.replace(sig)``: ``sig`` runs in its place

Messages name the problem and, where there is one, the fix.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any


class CeleriacError(Exception):
    """Root of every exception raised by celeriac itself."""


class ConfigurationError(CeleriacError):
    """A setting, URL or ``-A`` path is wrong, or an optional driver is not installed."""


class ResultsNotStored(ConfigurationError, NotImplementedError):
    """A task's result or state was asked for, but the app stores none: no result backend is
    configured and its broker keeps no results (RabbitMQ). A ``NotImplementedError`` too, as
    Celery raises one there."""


class ChordsNotSupported(ConfigurationError, NotImplementedError):
    """A chord was applied on an app whose result store cannot join one (``rpc://``, or no
    result backend): raised before any of its messages is published. A
    ``NotImplementedError`` too, as Celery raises one there."""


class BrokerError(CeleriacError):
    """The broker or the result store could not be reached, or refused an operation."""


class BrokerUnreachable(BrokerError):
    """The broker cannot be reached right now (down, restarting, a dropped connection, a
    wrong address): the same call may work later. A worker waits for its broker at start
    and rides out outages after; a client's ``delay()`` raises it with the fix."""


class BackendUnreachable(BrokerError):
    """The result store cannot be reached right now (down, restarting, a dropped connection).

    A backend raises it from a store that may work if tried again later; the worker then
    keeps the task's outcome and stores it again with backoff (its message stays held), so
    an outage never makes a task run twice.
    """


class NotLeading(BrokerError):
    """A write only the leader may make (the periodic-task schedulers' lead on RabbitMQ) was
    asked of a participant that does not lead, or no longer does."""


class ResultRejected(BrokerError):
    """The result store refused this record (too large for it, out of memory, a wrong key
    type): storing it again would fail the same way, so the worker stores a FAILURE that
    says why instead, and later results do not wait behind it."""


class ResultTooLarge(ResultRejected):
    """The encoded result record is bigger than ``result_max_size``."""


class ProtocolError(CeleriacError):
    """A message is not a valid Celery protocol v2 task message."""


class ContentDisallowed(ProtocolError):
    """The message's content type is not listed in ``accept_content``."""


class MessageTooLarge(ProtocolError):
    """The serialized message exceeds ``broker_max_message_size``."""


class CanvasError(ProtocolError):
    """A signature dict (a task, chain, group, chord, map or chunks in Celery's form) is
    malformed, or asks for something a canvas cannot do (a callback on a group).

    A protocol error because signature dicts travel in messages (``embed.chain``,
    ``callbacks``, ``chord``): the message names where the bad one sits.
    """


class ResourceError(CeleriacError):
    """A worker resource failed to start, or a task needs one this process has not started."""


class NotRegistered(CeleriacError):
    """The worker has no task registered under the message's task name."""


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """A result did not reach a ready state within the timeout given to ``get()``."""


class TaskError(CeleriacError):
    """Base of the errors a task's run can end with."""


class RemoteTaskError(TaskError):
    """The task failed with an exception type this process cannot (or may not) import.

    It carries what the worker stored so that nothing is lost: the exception's type name,
    its module, its arguments and the traceback as the worker printed it.
    """

    def __init__(
        self, exc_type: str, exc_module: str | None, exc_args: list[Any], traceback: str | None
    ) -> None:
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_args = exc_args
        self.remote_traceback = traceback
        qualified = (
            f"{exc_module}.{exc_type}" if exc_module and exc_module != "builtins" else exc_type
        )
        message = ", ".join(str(a) for a in exc_args)
        super().__init__(f"{qualified}: {message}" if message else qualified)


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a running task when its ``soft_time_limit`` has passed: clean up and stop."""


class TimeLimitExceeded(TaskError):
    """The task ran past its ``time_limit`` and was stopped by the worker."""


class MaxRetriesExceededError(TaskError):
    """``self.retry()`` was called after ``max_retries`` retries and no exception was given."""


class TaskRevokedError(TaskError):
    """The task expired (or was revoked) before it ran."""


class ChordError(TaskError):
    """A chord's body was not run because a task of its header failed (or was revoked):
    stored as the body's FAILURE (under Celery's ``celery.exceptions``), naming the task
    that failed and its exception, and given to the body's error callbacks."""


class Retry(Exception):
    """Raised by ``self.retry()``; the worker catches it and republishes the task.

    A signal, not an error, so not a CeleriacError: ``except CeleriacError`` around a call
    to ``self.retry()`` lets it through (Celery's ``Retry`` is a ``CeleryError``, and such a
    handler swallows the retry there). Task code should let it propagate (``raise
    self.retry(...)`` reads best); ``except Exception`` still catches it, as in Celery.
    """

    def __init__(
        self, exc: BaseException | None, when: datetime, message: str | None = None
    ) -> None:
        self.exc = exc
        self.when = when
        super().__init__(message or f"Retry at {when.isoformat()}" + (f": {exc!r}" if exc else ""))


class Replace(Exception):
    """Raised by ``self.replace(sig)``; the worker catches it, publishes ``sig`` in the
    task's place and stores nothing under the task's id (Celery raises ``Ignore`` there):
    the replacement's result is stored under it.

    ``sig`` is the signature the task is replaced with, as the task gave it; whoever runs
    the task prepares it the way Celery's ``Task.replace`` does
    (:func:`celeriac.task.replacement`: frozen with the task's id, the task's chain,
    callbacks, errbacks and chord membership carried over). A signal like :class:`Retry`,
    for the same reason: ``except CeleriacError`` in the task lets it through.
    """

    def __init__(self, sig: Mapping[str, Any]) -> None:
        self.sig = sig
        super().__init__(f"Replaced by {sig.get('task')!r}")


class SyncWaitInTaskError(CeleriacError):
    """``result.get()`` was called inside a running task.

    A task that blocks waiting for another task can deadlock the worker: the awaited task may
    need the very slot the waiting task occupies. Chain tasks instead, or pass
    ``disable_sync_subtasks=False`` to ``get()`` when you know the wait is safe.
    """
