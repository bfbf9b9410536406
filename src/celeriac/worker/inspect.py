"""The ``inspect`` commands: what a worker reports to ``celery inspect``, Flower and
``app.control.inspect()``, in Celery 5.7's reply shapes (``shared/celery-protocol/WAVE2.md``
§2.3-2.4: Flower reads ``stats``'s ``broker`` and ``total``, and lists a worker only once
``stats``, ``active_queues``, ``registered`` and ``conf`` answer).

Where celeriac's worker differs from Celery's, the reply says what celeriac has:
``scheduled`` is empty (a task with a future ETA waits in the broker, not in a worker's
memory), and ``pool`` describes one process running tasks on its event loop and threads.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import sys
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import celeriac
from celeriac.config import Settings
from celeriac.transports.urls import redacted
from celeriac.worker.commands import ControlContext, command
from celeriac.worker.running import Running, request_info

#: Celery's default ``taskinfoitems`` for ``registered``: attributes shown when set.
TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")
#: ``rusage`` fields, in Celery's order (``stats``).
RUSAGE_FIELDS = (
    "utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap",
    "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
)  # fmt: skip


@command("inspect")
def ping(context: ControlContext) -> dict[str, str]:
    """Answer, to show the worker is alive."""
    return {"ok": "pong"}


@command("inspect")
def clock(context: ControlContext) -> dict[str, int]:
    """The worker's Lamport clock."""
    return {"clock": context.clock.value}


@command("inspect")
def active(context: ControlContext, safe: bool | None = None) -> list[dict[str, Any]]:
    """The tasks running now (``safe``: their arguments as repr strings)."""
    return [running.as_celery(bool(safe)) for running in context.worker.running.active()]


@command("inspect")
def reserved(context: ControlContext, safe: bool | None = None) -> list[dict[str, Any]]:
    """The tasks received and not started yet."""
    return [request_info(r, None, safe=bool(safe)) for r in context.worker.running.reserved()]


@command("inspect")
def scheduled(context: ControlContext, safe: bool | None = None) -> list[dict[str, Any]]:
    """Tasks held for their ETA: none, since a celeriac worker leaves them in the broker
    until they are due."""
    return []


@command("inspect")
def query_task(context: ControlContext, ids: Any = ()) -> dict[str, Any]:
    """The state here (``active`` or ``reserved``) and request of each task id known."""
    wanted = [ids] if isinstance(ids, str) else list(ids or ())
    found: dict[str, Any] = {}
    for task_id in wanted:
        held = context.worker.running.find(str(task_id))
        if isinstance(held, Running):
            found[task_id] = ["active", held.as_celery()]
        elif held is not None:
            found[task_id] = ["reserved", request_info(held, None)]
    return found


@command("inspect")
def registered(
    context: ControlContext, taskinfoitems: Any = None, builtins: bool = False
) -> list[str]:
    """The names of the tasks this worker runs, sorted; ``celery.*`` only with
    ``builtins``; each with the ``taskinfoitems`` attributes it sets."""
    items = tuple(taskinfoitems or TASK_INFO_ITEMS)  # none asked: Celery's defaults
    names = []
    for name, task in sorted(context.worker.app.tasks.items()):
        if name.startswith("celery.") and not builtins:
            continue
        shown = [f"{item}={value}" for item in items if (value := _task_item(context, task, item))]
        names.append(f"{name} [{' '.join(shown)}]" if shown else name)
    return names


def _task_item(context: ControlContext, task: Any, item: str) -> Any:
    """A task attribute ``registered`` shows; None when unset (not shown). ``rate_limit`` is
    the one in force in this worker (its option, annotation or default, or what remote
    control set), as Celery's task attribute is."""
    if item == "rate_limit":
        return context.worker.rate_limits.rate_of(task)
    if item in ("time_limit", "soft_time_limit"):
        return getattr(task, item, None)
    options = getattr(task, "options", None)
    return getattr(options, item, None)


@command("inspect")
def active_queues(context: ControlContext) -> list[dict[str, Any]]:
    """The queues this worker consumes, as kombu's ``Queue.as_dict`` describes Celery's
    default queues (a durable direct exchange of the queue's name)."""
    return [_queue_info(name) for name in context.worker.queues]


def _queue_info(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "exchange": {
            "name": name,
            "type": "direct",
            "arguments": None,
            "durable": True,
            "passive": False,
            "auto_delete": False,
            "delivery_mode": None,
            "no_declare": False,
        },
        "routing_key": name,
        "queue_arguments": None,
        "binding_arguments": None,
        "consumer_arguments": None,
        "durable": True,
        "exclusive": False,
        "auto_delete": False,
        "no_ack": False,
        "alias": None,
        "bindings": [],
        "no_declare": None,
        "expires": None,
        "message_ttl": None,
        "max_length": None,
        "max_length_bytes": None,
        "max_priority": None,
    }


@command("inspect", aliases=("dump_conf",))
def conf(context: ControlContext, with_defaults: bool = False) -> dict[str, Any]:
    """The worker's settings that differ from the defaults (all with ``with_defaults``),
    passwords hidden."""
    return settings_of(context.worker.app.conf, with_defaults)


def settings_of(settings: Settings, with_defaults: bool = False) -> dict[str, Any]:
    """``settings`` as JSON data, the URLs' passwords hidden."""
    defaults = Settings()
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(Settings):
        if spec.name.startswith("_"):
            continue
        value = getattr(settings, spec.name)
        if not with_defaults and value == getattr(defaults, spec.name):
            continue
        if spec.name in ("broker_url", "result_backend") and isinstance(value, str):
            value = redacted(value)
        out[spec.name] = value
    return out


@command("inspect")
def stats(context: ControlContext) -> dict[str, Any]:
    """Counters and facts about the worker: tasks taken per name, its process, broker,
    prefetch and resource usage."""
    worker = context.worker
    soft, hard = worker.app.conf.task_soft_time_limit, worker.app.conf.task_time_limit
    return {
        "total": dict(worker.running.total),
        "pid": os.getpid(),
        "clock": str(context.clock.value),
        "uptime": int(time.time() - context.started_at),
        "pool": {
            "implementation": "celeriac.worker:asyncio",
            "max-concurrency": worker.concurrency,
            "processes": [os.getpid()],
            "threads": worker.threads,
            "max-tasks-per-child": worker.max_tasks or "N/A",
            "put-guarded-by-semaphore": False,
            "timeouts": [soft or 0, hard or 0],
        },
        "broker": broker_info(context.conn.broker.url),
        "prefetch_count": worker.prefetch,
        "rusage": _rusage(),
    }


def broker_info(url: str) -> dict[str, Any]:
    """The broker as Celery's ``stats`` describes its connection (no password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    transport = {"rediss": "redis", "amqps": "amqp", "pyamqp": "amqp"}.get(scheme, scheme)
    path = unquote(parts.path.lstrip("/"))
    port = parts.port if parts.hostname else None
    return {
        "hostname": parts.hostname or ("localhost" if transport != "sqlite" else None),
        "userid": unquote(parts.username) if parts.username else None,
        "virtual_host": path or ("/" if transport == "amqp" else "0"),
        "port": port,
        "insist": False,
        "ssl": scheme in ("rediss", "amqps"),
        "transport": transport,
        "connect_timeout": 4,
        "transport_options": {},
        "login_method": None,
        "uri_prefix": None,
        "heartbeat": 120.0,
        "failover_strategy": "round-robin",
        "alternates": [],
        "credential_provider": None,
    }


def _rusage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {name: getattr(usage, f"ru_{name}") for name in RUSAGE_FIELDS}


@command("inspect")
def report(context: ControlContext) -> dict[str, str]:
    """A text report: software, platform and settings, as ``celery report`` prints them."""
    conn = context.conn
    lines = [
        "",
        f"software -> celeriac:{celeriac.__version__} py:{platform.python_version()}",
        f"platform -> system:{platform.system()} arch:{platform.architecture()[0]}",
        f"            kernel version:{platform.release()} imp:{sys.implementation.name}",
        f"settings -> transport:{broker_info(conn.broker.url)['transport']}"
        f" results:{conn.backend.describe()}",
        "",
    ]
    lines += [f"{k}: {v!r}" for k, v in settings_of(context.worker.app.conf).items()]
    return {"ok": "\n".join(lines) + "\n"}


@command("inspect")
def hello(
    context: ControlContext, from_node: str | None = None, revoked: Any = None
) -> dict[str, Any] | None:
    """A starting Celery worker's greeting (mingle): the ids revoked here and the clock;
    nothing to the worker's own greeting."""
    if from_node == context.hostname:
        return None
    if revoked:  # a Celery worker's list (mingle): honoured here too
        context.worker.revokes.add(str(task_id) for task_id in revoked)
    return {"revoked": context.worker.revokes.ids(), "clock": context.clock.forward()}
