"""Workers and tasks as the events tell them, by Celery's rules (``celery.events.state``,
which Flower shows): a worker is alive while its last heartbeat is younger than twice its
``freq`` (60 s when it never said); any event of a host counts as a heartbeat;
``worker-offline`` removes it. A task's state follows its events' types; a finished task
is not set back by an older event that arrives late."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: Celery's ``HEARTBEAT_EXPIRE_WINDOW``: alive for twice the announced interval.
HEARTBEAT_EXPIRE_FACTOR = 2.0
#: The interval of a worker that never announced one (Celery's default ``freq``).
DEFAULT_FREQ = 60.0
#: Heartbeats kept per worker (Celery's ``heartbeat_max``).
MAX_HEARTBEATS = 4
#: Tasks kept at most, the least recently heard of dropped first (Celery's ``max_tasks_in_memory``).
MAX_TASKS = 10_000

#: The state each task event puts its task in (Celery's ``TASK_EVENT_TO_STATE``).
TASK_EVENT_TO_STATE = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
    # celeriac's workers send a running task's progress (Celery's custom-event form).
    "task-progress": "PROGRESS",
}
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})
#: Fields of a ``task-progress`` event that are not the progress itself.
PROGRESS_SKIPPED = frozenset(
    {
        "hostname",
        "utcoffset",
        "pid",
        "clock",
        "timestamp",
        "type",
        "uuid",
        "state",
        "local_received",
    }
)
#: Worker fields an event of the worker updates.
WORKER_FIELDS = ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "pid")
#: Task fields task events carry (besides uuid, type, hostname, clock, timestamps).
TASK_FIELDS = (
    "name",
    "args",
    "kwargs",
    "root_id",
    "parent_id",
    "retries",
    "eta",
    "expires",
    "result",
    "runtime",
    "exception",
    "traceback",
)


@dataclass
class WorkerState:
    """One worker as its events describe it."""

    hostname: str
    freq: float = DEFAULT_FREQ
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None
    pid: int | None = None
    clock: int = 0
    #: ``local_received`` of its last events, oldest first.
    heartbeats: list[float] = field(default_factory=list)
    #: Events heard, per type.
    events: dict[str, int] = field(default_factory=dict)

    def alive(self, now: float | None = None) -> bool:
        """Heard from within twice its heartbeat interval (Celery's ``Worker.alive``)."""
        if not self.heartbeats:
            return False
        now = time.time() if now is None else now
        return now < self.heartbeats[-1] + self.freq * HEARTBEAT_EXPIRE_FACTOR

    def heard(self, event: dict[str, Any]) -> None:
        self.events[event["type"]] = self.events.get(event["type"], 0) + 1
        if isinstance(event.get("clock"), int):
            self.clock = max(self.clock, event["clock"])
        received = event.get("local_received")
        if isinstance(received, int | float):
            self.heartbeats.append(float(received))
            self.heartbeats.sort()
            del self.heartbeats[:-MAX_HEARTBEATS]
        if event["type"].startswith("worker-"):
            for name in WORKER_FIELDS:
                if name in event:
                    setattr(self, name, event[name])
            if not isinstance(self.freq, int | float) or self.freq <= 0:
                self.freq = DEFAULT_FREQ


@dataclass
class TaskState:
    """One task as its events describe it."""

    uuid: str
    state: str = "PENDING"
    name: str | None = None
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    retries: int | None = None
    eta: str | None = None
    expires: str | None = None
    result: str | None = None
    runtime: float | None = None
    exception: str | None = None
    traceback: str | None = None
    clock: int = 0
    #: The last progress the task reported (a ``task-progress`` event's own fields).
    progress: dict[str, Any] = field(default_factory=dict)
    #: When each state was entered (the event's timestamp), by state.
    timestamps: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    def heard(self, event: dict[str, Any]) -> None:
        new_state = TASK_EVENT_TO_STATE.get(event["type"])
        given = event.get("clock")
        clock = given if isinstance(given, int) else 0
        late = self.ready and new_state not in READY_STATES and clock < self.clock
        for name in TASK_FIELDS:
            if name in event and (not late or getattr(self, name) is None):
                setattr(self, name, event[name])
        if event["type"] != "task-sent" and isinstance(event.get("hostname"), str):
            self.worker = self.worker if late else event["hostname"]
        if event["type"] == "task-progress" and not late:
            self.progress = {k: v for k, v in event.items() if k not in PROGRESS_SKIPPED}
        if new_state is not None and not late:
            self.state = new_state
            self.clock = max(self.clock, clock)
            if isinstance(event.get("timestamp"), int | float):
                self.timestamps[new_state] = event["timestamp"]


class State:
    """Workers by hostname and tasks by uuid, kept up to date by :meth:`event`."""

    def __init__(self, max_tasks: int = MAX_TASKS) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.tasks: OrderedDict[str, TaskState] = OrderedDict()
        self.max_tasks = max_tasks
        self.event_count = 0

    def event(self, event: dict[str, Any]) -> None:
        """Take one event (as :class:`~celeriac.events.EventReceiver` yields them)."""
        self.event_count += 1
        type = event.get("type")
        hostname = event.get("hostname")
        if not isinstance(type, str) or not isinstance(hostname, str):
            return
        if type == "worker-offline":
            self.workers.pop(hostname, None)
        elif type.startswith("worker-") or (type.startswith("task-") and type != "task-sent"):
            worker = self.workers.get(hostname)
            if worker is None:
                worker = self.workers[hostname] = WorkerState(hostname)
            worker.heard(event)
        if type.startswith("task-") and isinstance(event.get("uuid"), str):
            self._task(event["uuid"]).heard(event)

    def _task(self, uuid: str) -> TaskState:
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskState(uuid)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(uuid)
        return task

    def alive_workers(self, now: float | None = None) -> list[WorkerState]:
        return [worker for worker in self.workers.values() if worker.alive(now)]

    def tasks_of(self, hostname: str) -> list[TaskState]:
        """The tasks a worker received, most recently heard of first."""
        return [task for task in reversed(self.tasks.values()) if task.worker == hostname]
