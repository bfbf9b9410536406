"""A worker's events on ``event_exchange`` (Celery's ``celeryev``), so Flower and
``celery events`` see celeriac workers as they see Celery's.

Worker events are always sent, as Celery's: ``worker-online`` when the worker consumes,
``worker-heartbeat`` every ``worker_heartbeat_interval`` seconds, ``worker-offline`` when
it stops consuming (before it drains, as Celery's heart stops before its pool; task
events of the drain are not sent). Task events (``task-received``, ``-started``,
``-succeeded``, ``-failed``, ``-retried``, ``-revoked``, ``-rejected``) are sent while they
are enabled: ``worker_send_task_events``, or at run time the ``enable_events`` /
``disable_events`` control commands (Flower casts ``enable_events`` every 5 s).

Sending never holds up a task: a hook only builds the event and appends it to a list; one
background task sends what waits, one message per event or, for several task events, one
``task.multi`` message whose body is their list, as Celery's prefork worker batches them.
A broker error is logged once per outage and the events of the outage are dropped (events
are fire-and-forget in Celery too). With task events off, each task hook returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
import traceback
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import celeriac
from celeriac.errors import BrokerUnreachable
from celeriac.protocol import events
from celeriac.protocol.clock import LamportClock
from celeriac.transports.broker import Delivery, wait_for_signal
from celeriac.worker.commands import ControlContext, command
from celeriac.worker.hooks import WorkerHook

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.task import Request
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: What the worker says it is in its heartbeats (Celery's say ``py-celery``).
SW_IDENT = "py-celeriac"
#: Task events per ``task.multi`` message at most: fewer messages is less work for the
#: worker and the broker; receivers take lists of any length.
MAX_BATCH = 100
#: Task events waiting to be sent at most (the broker slower than the tasks, or away):
#: beyond, new ones are dropped, so a stalled broker cannot fill the memory.
MAX_PENDING = 10_000
#: The longest a stopping worker waits for its last events (``worker-offline``) to go.
STOP_TIMEOUT = 5.0
#: The ``freq`` of the extra heartbeat the ``heartbeat`` control command asks for (Celery's).
REQUESTED_HEARTBEAT_FREQ = 5.0


#: Fields every event has: a progress report's keys of the same names are left out.
RESERVED = frozenset(
    {"hostname", "utcoffset", "pid", "clock", "timestamp", "type", "uuid", "state"}
)


class WorkerEvents(WorkerHook):
    """The hook: builds each event when it happens and sends it from one background task."""

    def __init__(self, app: Celery, clock: LamportClock) -> None:
        conf = app.conf
        self.app = app
        self.clock = clock
        self.exchange: str = conf.event_exchange
        self.interval = float(conf.worker_heartbeat_interval)
        #: Whether task events are sent now (``enable_events`` / ``disable_events``).
        self.task_events = bool(conf.worker_send_task_events)
        self.hostname = ""
        #: Events sent, and dropped (a broker error, or too many waiting), since start.
        self.sent = 0
        self.dropped = 0
        self._worker: Worker | None = None
        self._pending: list[dict[str, Any]] = []
        self._extra_heartbeats = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._failing = False
        self._sender: asyncio.Task[None] | None = None
        self._pid = os.getpid()
        #: Hours west of UTC, read again at each heartbeat (not per event: it asks the OS).
        self._offset = events.utcoffset()

    # -- the worker's life ---------------------------------------------------------------

    def worker_started(self, worker: Worker) -> None:
        self._worker = worker
        self.hostname = worker.hostname
        self._wake = asyncio.Event()
        self._pid = os.getpid()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    def worker_stopping(self, worker: Worker) -> None:
        """Send what waits, then ``worker-offline``; the app's close waits for it."""
        self._stopping = True
        self._wake.set()
        sender = self._sender
        if sender is not None and not sender.done():
            sending = self.app._sending  # the app's close awaits these before closing
            sending.add(sender)
            sender.add_done_callback(sending.discard)

    # -- task events ---------------------------------------------------------------------

    def task_received(self, request: Request) -> None:
        if not self.task_events:
            return
        headers = request.headers
        self._task(
            "task-received",
            events.task_received(
                request.id,
                request.task,
                _repr_header(headers, "argsrepr", tuple(request.args)),
                _repr_header(headers, "kwargsrepr", request.kwargs),
                root_id=request.root_id,
                parent_id=request.parent_id,
                retries=request.retries,
                eta=request.eta,
                expires=request.expires,
            ),
        )

    def task_started(self, request: Request) -> None:
        if not self.task_events:
            return
        self._task("task-started", {"uuid": request.id})

    def task_succeeded(self, request: Request, value: Any, runtime: float) -> None:
        if not self.task_events:
            return
        self._task("task-succeeded", events.task_succeeded(request.id, value, runtime))

    def task_failed(self, request: Request, exc: BaseException, runtime: float) -> None:
        if not self.task_events:
            return
        self._task("task-failed", events.task_failed(request.id, repr(exc), _traceback(exc)))

    def task_retried(self, request: Request, exc: BaseException | None, eta: datetime) -> None:
        if not self.task_events:
            return
        exception = repr(exc) if exc is not None else f"Retry(at {eta.isoformat()})"
        traceback_text = _traceback(exc) if exc is not None else None
        self._task("task-retried", events.task_failed(request.id, exception, traceback_text))

    def task_revoked(self, request: Request, reason: str) -> None:
        if not self.task_events:
            return
        terminated = reason == "terminated"
        self._task(
            "task-revoked",
            events.task_revoked(
                request.id,
                terminated=terminated,
                # The hook is not told the signal: Celery's default, SIGTERM.
                signum=int(signal.SIGTERM) if terminated else None,
                expired=reason == "expired",
            ),
        )

    def task_progress(self, request: Request, state: str, info: Any) -> None:
        if not self.task_events:
            return
        # Celery's custom-event convention (``send_event("task-progress", current=...)``):
        # the progress's own keys as fields, never over the event's.
        fields = dict(info) if isinstance(info, dict) else {"info": info}
        own = {k: v for k, v in fields.items() if isinstance(k, str) and k not in RESERVED}
        self._task("task-progress", {**own, "uuid": request.id, "state": state})

    def task_rejected(self, delivery: Delivery, reason: str) -> None:
        if not self.task_events:
            return
        task_id = delivery.envelope.headers.get("id")
        if isinstance(task_id, str) and task_id:
            self._task("task-rejected", events.task_rejected(task_id, requeue=False))

    def _task(self, type: str, fields: dict[str, Any]) -> None:
        if self._stopping or self._sender is None:
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "%s: %d task events wait to be sent; dropping new ones",
                    self.hostname,
                    MAX_PENDING,
                )
            return
        self._pending.append(
            events.event(
                type,
                fields,
                hostname=self.hostname,
                clock=self.clock.forward(),
                pid=self._pid,
                offset=self._offset,
            )
        )
        self._wake.set()

    # -- remote control ------------------------------------------------------------------

    def enable(self) -> dict[str, str]:
        """``enable_events``: send task events from now on (Celery's replies)."""
        if self.task_events:
            return {"ok": "task events already enabled"}
        self.task_events = True
        logger.info("%s: task events enabled by remote control", self.hostname)
        return {"ok": "task events enabled"}

    def disable(self) -> dict[str, str]:
        """``disable_events``: stop sending task events (Celery's replies)."""
        if not self.task_events:
            return {"ok": "task events already disabled"}
        self.task_events = False
        logger.info("%s: task events disabled by remote control", self.hostname)
        return {"ok": "task events disabled"}

    def heartbeat_now(self) -> None:
        """``heartbeat``: one extra heartbeat now, with ``freq`` 5 (Celery's)."""
        self._extra_heartbeats += 1
        self._wake.set()

    # -- sending -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        await self._send_worker_event("worker-online", self.interval)
        next_beat = loop.time() + self.interval
        while not self._stopping:
            if not self._pending and not self._extra_heartbeats:
                await wait_for_signal(self._wake, next_beat - loop.time())
            self._wake.clear()
            if self._pending:
                await self._flush()
            while self._extra_heartbeats:
                self._extra_heartbeats -= 1
                await self._send_worker_event("worker-heartbeat", REQUESTED_HEARTBEAT_FREQ)
            if loop.time() >= next_beat and not self._stopping:
                await self._send_worker_event("worker-heartbeat", self.interval)
                next_beat = max(next_beat + self.interval, loop.time())
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._flush()
                await self._send_worker_event("worker-offline", self.interval)
        except TimeoutError:
            logger.warning(
                "%s: could not send worker-offline within %g s", self.hostname, STOP_TIMEOUT
            )

    async def _flush(self) -> None:
        waiting, self._pending = self._pending, []
        if len(waiting) == 1:
            await self._send(waiting[0], events.routing_key(waiting[0]["type"]))
            return
        # All at once: the broker's connection writes them in this order, and a sender
        # that waited on each round trip would fall behind a busy worker.
        await asyncio.gather(
            *(
                self._send(waiting[start : start + MAX_BATCH], events.BATCH_ROUTING_KEY)
                for start in range(0, len(waiting), MAX_BATCH)
            )
        )

    async def _send_worker_event(self, type: str, freq: float) -> None:
        self._offset = events.utcoffset()
        event = events.event(
            type,
            self._status(freq),
            hostname=self.hostname,
            clock=self.clock.forward(),
            pid=self._pid,
            offset=self._offset,
        )
        await self._send(event, events.routing_key(type))

    def _status(self, freq: float) -> dict[str, Any]:
        worker = self._worker
        assert worker is not None
        return events.worker_status(
            freq=freq,
            active=len(worker.running),
            processed=sum(worker.running.total.values()),
            loadavg=_loadavg(),
            sw_ident=SW_IDENT,
            sw_ver=celeriac.__version__,
            sw_sys=platform.system(),
        )

    async def _send(
        self, payload: dict[str, Any] | Sequence[dict[str, Any]], routing_key: str
    ) -> None:
        worker = self._worker
        count = 1 if isinstance(payload, dict) else len(payload)
        try:
            assert worker is not None and worker.conn is not None
            envelope = events.build_envelope(payload, self.hostname)
            await worker.conn.broker.broadcast(self.exchange, envelope, routing_key, kind="topic")
        except Exception as exc:  # a broker away, a message too large: never the task's
            self.dropped += count
            if not self._failing:
                self._failing = True
                # An outage is logged by the broker, once each way; anything else is news.
                level = logging.DEBUG if isinstance(exc, BrokerUnreachable) else logging.WARNING
                logger.log(
                    level,
                    "%s: could not send events to %r (%s); dropping them until the broker"
                    " takes them again",
                    self.hostname,
                    self.exchange,
                    exc,
                )
            return
        self.sent += count
        if self._failing:
            self._failing = False
            logger.info("%s: events are sent again", self.hostname)


def _repr_header(headers: dict[str, Any], name: str, value: Any) -> str:
    """The message's ``argsrepr``/``kwargsrepr``, else a repr of ``value`` (Celery's)."""
    given = headers.get(name)
    return given if isinstance(given, str) else events.short_repr(value)


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available here
        return (0.0, 0.0, 0.0)


# -- the control commands ----------------------------------------------------------------


def _events(context: ControlContext) -> WorkerEvents:
    return context.worker.events


@command("control")
def enable_events(context: ControlContext) -> dict[str, str]:
    """Send task events from now on."""
    return _events(context).enable()


@command("control")
def disable_events(context: ControlContext) -> dict[str, str]:
    """Stop sending task events."""
    return _events(context).disable()


@command("control")
def heartbeat(context: ControlContext) -> None:
    """Send one heartbeat event now (Flower asks when it connects)."""
    _events(context).heartbeat_now()
