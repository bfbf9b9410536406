"""Re-capture the Celery wire messages the test suite uses as vectors (tests/fixtures/celery).

The real Celery installed by the dev extras (``celery[redis]``) makes the calls itself, on the
loopback Redis and RabbitMQ, and an in-process Celery worker (solo pool) runs the tasks, so that
what only a worker publishes (a retry, a chain's next step, a chord body, a link callback, the
result records) is Celery's own too. Nothing is built by hand: the messages are recorded where
kombu hands them to the client library (redis-py's commands, py-amqp's ``basic_publish``), so
the files hold exactly the bytes Celery sent.

    .venv/bin/python scripts/capture_celery_fixtures.py [--out tests/fixtures/celery]

Needs Redis on 127.0.0.1:6379 (it uses DBs 12 and 13, which must be empty: it deletes what it
created there when done) and RabbitMQ on 127.0.0.1:5672 with ``rabbitmqctl`` on this machine
(a virtual host of its own, deleted when done).

The files follow the conventions of Celery-protocol captures: ``description``,
``captured_with`` (versions), then for AMQP ``exchange``, ``routing_key``, ``properties``,
``body_raw``, ``body_decoded``; for Redis ``redis_key``, ``redis_command``, ``value_raw``,
``envelope``, ``body_decoded``; for results ``key`` and ``value_raw``/``value_decoded``.
``client_ids`` records the ids Celery's client returned for the call, so that the tests can
check that the messages carry them. Sanitised, as the tests expect: the producer origin
``gen<pid>@<host>`` becomes ``gen4242@host`` (the Redis body re-encoded, so the three forms
still agree), the worker is named ``worker1@host``, paths in tracebacks become ``/venv/...``
and ``/app/...``. Ids, timestamps and byte layout are as captured, so they change on every run.
Every file is re-captured; none is copied from elsewhere. The expires=120 message is the
suite's example of a message past its expiry: run the tests two minutes after a capture.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import amqp
import celery
import kombu
import redis
from celery import Celery, chain, chord, group
from celery.contrib.testing.worker import start_worker

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "celery"
REDIS_BROKER_DB, REDIS_RESULT_DB = 12, 13
WORKER = "worker1@host"
FIXED_TASK_ID = "00000000-1111-2222-3333-444444444444"
RESTORED_TASK_ID = "bbbbbbbb-0000-0000-0000-0000000000b1"
VERSIONS = {
    "celery": celery.__version__,
    "kombu": kombu.__version__,
    "py-amqp": amqp.__version__,
    "redis-py": redis.__version__,
    "python": sys.version.split()[0],
}
WAIT = 20.0


class CustomError(Exception):
    """A user exception: its stored record names a module a client may not be able to import."""


# As if defined in a ``protoapp`` module the worker imports: Celery stores a user exception
# under its module's name, and wraps it instead when that module cannot be imported.
PROTOAPP_MODULE = types.ModuleType("protoapp")
CustomError.__module__ = "protoapp"
PROTOAPP_MODULE.CustomError = CustomError  # type: ignore[attr-defined]
sys.modules.setdefault("protoapp", PROTOAPP_MODULE)


# -- the app ------------------------------------------------------------------------------------


def make_app(broker: str, backend: str) -> Celery:
    """The ``protoapp`` Celery app and its tasks (names ``protoapp.<task>``)."""
    app = Celery("protoapp", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_track_started=True,
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
    )

    @app.task(name="protoapp.add", shared=False)
    def add(x: Any, y: Any) -> Any:
        return x + y

    @app.task(name="protoapp.tsum", shared=False)
    def tsum(nums: list[int]) -> int:
        return sum(nums)

    @app.task(name="protoapp.boom", shared=False)
    def boom(msg: str = "boom") -> None:
        raise ValueError(msg)

    @app.task(name="protoapp.boom_custom", shared=False)
    def boom_custom() -> None:
        raise CustomError("custom failure", 42)

    @app.task(name="protoapp.flaky", bind=True, max_retries=1, shared=False)
    def flaky(self: Any, x: int) -> int:
        if self.request.retries < 1:
            raise self.retry(exc=CustomError("try again"), countdown=2)
        return x * 10

    @app.task(name="protoapp.sleeper_late", acks_late=True, shared=False)
    def sleeper_late(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="protoapp.on_error", shared=False)
    def on_error(request: Any, exc: Any, traceback: Any) -> str:
        return "errback-called"

    return app


# -- recording what kombu hands to the client libraries ----------------------------------------


class Recorder:
    """Every Redis command and AMQP publish of this process, in order."""

    def __init__(self) -> None:
        self.redis: list[list[Any]] = []
        self.amqp: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def redis_command(self, args: tuple[Any, ...]) -> None:
        with self.lock:
            self.redis.append([_text(a) for a in args])

    def amqp_publish(self, msg: Any, exchange: str, routing_key: str) -> None:
        body = msg.body.decode() if isinstance(msg.body, bytes) else msg.body
        with self.lock:
            self.amqp.append(
                {
                    "exchange": exchange,
                    "routing_key": routing_key,
                    "properties": _basic_properties(msg.properties),
                    "body": body,
                }
            )


def _basic_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """The basic properties as they go on the wire: py-amqp leaves out a property that is
    None (the queue variant's priority), and the headers table has its AMQP name
    (``headers``, as a broker-side trace shows it) rather than ``application_headers``."""
    named = {k: v for k, v in properties.items() if k != "application_headers" and v is not None}
    if properties.get("application_headers") is not None:
        named["headers"] = properties["application_headers"]
    return named


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


@contextmanager
def recording() -> Iterator[Recorder]:
    """Wrap redis-py's command entry points and py-amqp's publish while the block runs.

    kombu's BRPOP bypasses ``execute_command`` (it writes to the connection and reads later),
    hence the hook on ``send_command``, which records only that one command.
    """
    rec = Recorder()
    pipeline = redis.client.Pipeline
    originals: list[tuple[Any, str, Any]] = [
        (redis.Redis, "execute_command", redis.Redis.execute_command),
        (pipeline, "pipeline_execute_command", pipeline.pipeline_execute_command),
        (pipeline, "immediate_execute_command", pipeline.immediate_execute_command),
        (redis.connection.AbstractConnection, "send_command", None),
        (amqp.Channel, "_basic_publish", amqp.Channel._basic_publish),
        (amqp.Channel, "basic_publish", amqp.Channel.basic_publish),
    ]
    originals[3] = (
        redis.connection.AbstractConnection,
        "send_command",
        redis.connection.AbstractConnection.send_command,
    )

    def command_hook(original: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
            rec.redis_command(args)
            return original(self, *args, **kwargs)

        return hooked

    def brpop_hook(original: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
            if args and _text(args[0]).upper() == "BRPOP":
                rec.redis_command(args)
            return original(self, *args, **kwargs)

        return hooked

    publish_original = amqp.Channel._basic_publish

    def publish(self: Any, msg: Any, exchange: str = "", routing_key: str = "", *a: Any, **k: Any):  # type: ignore[no-untyped-def]
        rec.amqp_publish(msg, exchange, routing_key)
        return publish_original(self, msg, exchange, routing_key, *a, **k)

    redis.Redis.execute_command = command_hook(redis.Redis.execute_command)  # type: ignore[method-assign]
    pipeline.pipeline_execute_command = command_hook(pipeline.pipeline_execute_command)  # type: ignore[method-assign]
    pipeline.immediate_execute_command = command_hook(pipeline.immediate_execute_command)  # type: ignore[method-assign]
    redis.connection.AbstractConnection.send_command = brpop_hook(  # type: ignore[method-assign]
        redis.connection.AbstractConnection.send_command
    )
    amqp.Channel._basic_publish = publish  # type: ignore[method-assign]
    amqp.Channel.basic_publish = publish  # type: ignore[method-assign]
    try:
        yield rec
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


# -- sanitising and writing ---------------------------------------------------------------------


def sanitiser() -> Callable[[str], str]:
    subs = [
        (re.compile(r"gen\d+@" + re.escape(socket.gethostname())), "gen4242@host"),
        (re.compile(re.escape(sys.prefix)), "/venv"),
        (re.compile(re.escape(str(REPO))), "/app"),
    ]

    def sanitise(text: str) -> str:
        for pattern, replacement in subs:
            text = pattern.sub(replacement, text)
        return text

    return sanitise


SANITISE = sanitiser()


class Writer:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[str] = []

    def write(self, name: str, description: str, **data: Any) -> None:
        doc = {"description": description, "captured_with": VERSIONS, **data}
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        (self.out / name).write_text(text)
        self.written.append(name)


def amqp_fixture(publish: dict[str, Any]) -> dict[str, Any]:
    body = SANITISE(publish["body"])
    properties = json.loads(SANITISE(json.dumps(publish["properties"])))
    return {
        "transport": "amqp",
        "exchange": publish["exchange"],
        "routing_key": publish["routing_key"],
        "properties": properties,
        "body_raw": body,
        "body_decoded": json.loads(body),
    }


def redis_fixture(command: list[Any]) -> dict[str, Any]:
    """An LPUSH/RPUSH of a message: the element sanitised, its base64 body re-encoded."""
    verb, key, raw = command[0].upper(), command[1], command[2]
    envelope = json.loads(raw)
    body = SANITISE(base64.b64decode(envelope["body"]).decode())
    envelope["body"] = base64.b64encode(body.encode()).decode()
    envelope = json.loads(SANITISE(json.dumps(envelope)))
    return {
        "transport": "redis",
        "redis_key": key,
        "redis_command": verb,
        "value_raw": json.dumps(envelope),
        "envelope": envelope,
        "body_decoded": json.loads(body),
    }


# -- the calls ----------------------------------------------------------------------------------

TASK_CALLS: dict[str, str] = {
    "delay": "add.delay(2, 3)",
    "apply_async-kwargs": "add.apply_async(kwargs={'x': 1, 'y': 2})",
    "apply_async-countdown": "add.apply_async((1, 1), countdown=30) -> absolute ISO eta header",
    "apply_async-eta": "add.apply_async((1, 2), eta=datetime(2030,1,2,3,4,5,tzinfo=utc))",
    "apply_async-expires": "add.apply_async((1, 3), expires=120) -> absolute ISO expires header",
    "apply_async-priority": "add.apply_async((1, 4), priority=7)",
    "apply_async-queue": "add.apply_async((1, 5), queue='proto_other')",
    "apply_async-task_id": f"add.apply_async((1, 6), task_id='{FIXED_TASK_ID}')",
    "apply_async-headers": "add.apply_async((1, 7), headers={'x_tenant': 'acme', "
    "'x_trace': 'abc123'}) -> custom headers merged into the top-level headers",
    "apply_async-link": "add.apply_async((1, 8), link=add.s(100), link_error=on_error.s())"
    " -> callbacks/errbacks in embed",
    "apply_async-time_limits": "add.apply_async((1, 9), time_limit=60, soft_time_limit=50,"
    " ignore_result=True)",
    "send_task": "app.send_task('protoapp.add', args=[20, 22], kwargs={})",
    "send_task-unregistered": "app.send_task('some.remote.task', args=['a'], kwargs={'b': 1},"
    " queue='proto_remote')",
}


def publish_calls(app: Celery) -> dict[str, Any]:
    """Make every call of TASK_CALLS and the canvas; returns the ids the client got back and
    the wall-clock time each call was made (for the countdown and expires checks)."""
    add, on_error, tsum = app.tasks["protoapp.add"], app.tasks["protoapp.on_error"], None
    tsum = app.tasks["protoapp.tsum"]
    ids: dict[str, Any] = {}
    sent_at: dict[str, str] = {}

    def call(name: str, make: Callable[[], Any]) -> None:
        sent_at[name] = datetime.now(UTC).isoformat()
        ids[name] = make().id

    call("delay", lambda: add.delay(2, 3))
    call("apply_async-kwargs", lambda: add.apply_async(kwargs={"x": 1, "y": 2}))
    call("apply_async-countdown", lambda: add.apply_async((1, 1), countdown=30))
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    call("apply_async-eta", lambda: add.apply_async((1, 2), eta=eta))
    call("apply_async-expires", lambda: add.apply_async((1, 3), expires=120))
    call("apply_async-priority", lambda: add.apply_async((1, 4), priority=7))
    call("apply_async-queue", lambda: add.apply_async((1, 5), queue="proto_other"))
    call("apply_async-task_id", lambda: add.apply_async((1, 6), task_id=FIXED_TASK_ID))
    headers = {"x_tenant": "acme", "x_trace": "abc123"}
    call("apply_async-headers", lambda: add.apply_async((1, 7), headers=headers))
    link = {"link": add.s(100), "link_error": on_error.s()}
    call("apply_async-link", lambda: add.apply_async((1, 8), **link))
    limits = {"time_limit": 60, "soft_time_limit": 50, "ignore_result": True}
    call("apply_async-time_limits", lambda: add.apply_async((1, 9), **limits))
    call("send_task", lambda: app.send_task("protoapp.add", args=[20, 22], kwargs={}))
    remote = {"args": ["a"], "kwargs": {"b": 1}, "queue": "proto_remote"}
    call("send_task-unregistered", lambda: app.send_task("some.remote.task", **remote))

    chained = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    ids["chain"] = [chained.parent.parent.id, chained.parent.id, chained.id]
    grouped = group(add.s(i, i) for i in range(3)).apply_async()
    ids["group"] = grouped.id
    ids["group-children"] = [r.id for r in grouped.results]
    chorded = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    ids["chord-body"] = chorded.id
    ids["chord-group"] = chorded.parent.id
    ids["chord-header"] = [r.id for r in chorded.parent.results]
    return {"ids": ids, "sent_at": sent_at}


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"capture: timed out after {WAIT} s waiting for {what}")


def run_worker_calls(app: Celery) -> dict[str, str]:
    """The calls whose interesting part a worker does: results, a retry. Waits for each."""
    ids = {
        "boom": app.tasks["protoapp.boom"].delay("kaboom").id,
        "boom_custom": app.tasks["protoapp.boom_custom"].delay().id,
        "flaky": app.tasks["protoapp.flaky"].delay(5).id,
        "get": app.tasks["protoapp.add"].delay(5, 5).id,
    }
    for tid in ids.values():
        wait_for(lambda t=tid: app.AsyncResult(t).ready(), f"task {tid} to finish")  # type: ignore[misc]
    return ids


@contextmanager
def worker(app: Celery) -> Iterator[None]:
    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        hostname=WORKER,
        loglevel="WARNING",
        shutdown_timeout=60.0,
    ):
        yield


def first(items: list[Any], pred: Callable[[Any], bool], what: str) -> Any:
    for item in items:
        if pred(item):
            return item
    raise SystemExit(f"capture: nothing recorded for {what}")


# -- Redis ----------------------------------------------------------------------------------


def redis_pushes(rec: Recorder) -> list[list[Any]]:
    return [c for c in rec.redis if c[0].upper() in ("LPUSH", "RPUSH") and len(c) == 3]


def pushed_headers(command: list[Any]) -> dict[str, Any]:
    try:
        headers: dict[str, Any] = json.loads(command[2])["headers"]
    except (ValueError, KeyError, TypeError):
        return {}
    return headers


def capture_redis(writer: Writer) -> None:
    broker = f"redis://127.0.0.1:6379/{REDIS_BROKER_DB}"
    backend = f"redis://127.0.0.1:6379/{REDIS_RESULT_DB}"
    app = make_app(broker, backend)
    with recording() as rec:
        with worker(app):
            calls = publish_calls(app)
            ids = calls["ids"]
            wait_for(lambda: app.AsyncResult(ids["chord-body"]).ready(), "the chord body")
            wait_for(lambda: app.AsyncResult(ids["chain"][2]).ready(), "the chain's last step")
            more = run_worker_calls(app)
        restored = capture_restored(app, rec)
    pushes = redis_pushes(rec)

    def by_id(tid: str) -> list[Any]:
        return [c for c in pushes if pushed_headers(c).get("id") == tid]

    for variant, description in TASK_CALLS.items():
        extra = {"client_ids": {"id": ids[variant]}, "sent_at": calls["sent_at"][variant]}
        writer.write(
            f"redis-task-{variant}.json",
            f"Task message as LPUSHed by kombu's Redis transport: {description}",
            **redis_fixture(by_id(ids[variant])[0]),
            **extra,
        )
    write_canvas_redis(writer, pushes, ids, by_id)
    flaky = by_id(more["flaky"])
    writer.write(
        "redis-task-retry-republished.json",
        "Redis: the message the worker LPUSHes on self.retry(countdown=2): same task id,"
        " retries=1, an eta, parent_id = its own id",
        **redis_fixture(flaky[1]),
        client_ids={"id": more["flaky"]},
    )
    writer.write(
        "redis-transport-restored-message.json",
        "Message RPUSHed back onto its queue by kombu when the channel holding it un-acked"
        " closed (the same restore runs after the visibility timeout): redelivered=true added"
        " in headers and delivery_info; same delivery_tag",
        **redis_fixture(restored),
    )
    write_transport_redis(writer, rec)
    write_results(writer, app, more)


def write_canvas_redis(
    writer: Writer,
    pushes: list[list[Any]],
    ids: dict[str, Any],
    by_id: Callable[[str], list[Any]],
) -> None:
    first_step, second_step, _ = ids["chain"]
    writer.write(
        "redis-canvas-chain-first.json",
        "chain(add.s(1,2), add.s(3), add.s(4)).apply_async(): the first message; the remaining"
        " steps travel in embed.chain, last step first",
        **redis_fixture(by_id(first_step)[0]),
        client_ids={"chain": ids["chain"]},
    )
    writer.write(
        "redis-canvas-chain-second.json",
        "Redis: the second chain step, LPUSHed by the worker after step 1 returned 3",
        **redis_fixture(by_id(second_step)[0]),
        client_ids={"chain": ids["chain"]},
    )
    writer.write(
        "redis-canvas-group-child.json",
        "group(add.s(i,i) for i in range(3)).apply_async(): the second child (group id and"
        " group_index headers)",
        **redis_fixture(by_id(ids["group-children"][1])[0]),
        client_ids={"group": ids["group"], "children": ids["group-children"]},
    )
    chord_ids = {
        "group": ids["chord-group"],
        "header": ids["chord-header"],
        "body": ids["chord-body"],
    }
    writer.write(
        "redis-canvas-chord-header.json",
        "chord([add.s(1,1), add.s(2,2)], tsum.s()).apply_async(): the first header task;"
        " embed.chord carries the body signature",
        **redis_fixture(by_id(ids["chord-header"][0])[0]),
        client_ids=chord_ids,
    )
    writer.write(
        "redis-canvas-chord-body.json",
        "Redis: the chord body (tsum), LPUSHed by the worker that finished the last header task",
        **redis_fixture(by_id(ids["chord-body"])[0]),
        client_ids=chord_ids,
    )


def capture_restored(app: Celery, rec: Recorder) -> list[Any]:
    """A message taken from its queue and never acked, restored when its channel closes."""
    app.tasks["protoapp.sleeper_late"].apply_async((8,), task_id=RESTORED_TASK_ID)
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        # Messages the worker held (the ETA ones) were restored when it stopped: skip them,
        # un-acked too, so they are restored again with this one.
        wait_for(
            lambda: _took(channel.basic_get("celery", no_ack=False), RESTORED_TASK_ID),
            "the message to take",
        )
    restored = first(
        redis_pushes(rec)[::-1],
        lambda c: c[0].upper() == "RPUSH" and pushed_headers(c).get("id") == RESTORED_TASK_ID,
        "the restored message",
    )
    return list(restored)


def _took(message: Any, task_id: str) -> bool:
    return message is not None and message.headers.get("id") == task_id


def write_transport_redis(writer: Writer, rec: Recorder) -> None:
    hset = first(rec.redis, lambda c: c[0].upper() == "HSET" and c[1] == "unacked", "HSET")
    tag, raw = hset[2], SANITISE(hset[3])
    writer.write(
        "redis-transport-unacked-hash-entry.json",
        "HSET unacked <delivery_tag>: JSON array [envelope, exchange, routing_key] kept while a"
        " message is un-acked (written by the worker's QoS when it takes the message)",
        delivery_tag=tag,
        unacked_value_raw=raw,
        unacked_value_decoded=json.loads(raw),
    )
    oid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    brpops = sorted(
        {tuple(oid.sub("<oid>", str(a)) for a in c) for c in rec.redis if c[0].upper() == "BRPOP"}
    )
    writer.write(
        "redis-transport-brpop-commands.json",
        "Distinct BRPOP commands the worker sent (the queue key for each priority step, the"
        " bare key first, last argument the timeout in seconds). \\u0006\\u0016 is the"
        " priority separator.",
        commands=[list(b) for b in brpops],
    )


def write_results(writer: Writer, app: Celery, ids: dict[str, str]) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_RESULT_DB)
    try:
        for name, tag, description in (
            ("result-success.json", "get", "SUCCESS of add(5, 5)"),
            ("result-failure.json", "boom", "FAILURE: builtin exception ValueError"),
            (
                "result-failure-custom-exception.json",
                "boom_custom",
                "FAILURE: user exception protoapp.CustomError with two args",
            ),
        ):
            key = f"celery-task-meta-{ids[tag]}"
            raw = SANITISE(client.get(key).decode())  # type: ignore[union-attr]
            writer.write(name, description, key=key, value_raw=raw, value_decoded=json.loads(raw))
    finally:
        client.close()


# -- AMQP ----------------------------------------------------------------------------------


@contextmanager
def own_vhost() -> Iterator[str]:
    vhost = f"celeriac-capture-{uuid.uuid4().hex[:8]}"
    for argv in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", *argv], check=True, capture_output=True, timeout=60)
    try:
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


def capture_amqp(writer: Writer) -> None:
    with own_vhost() as vhost:
        broker = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        app = make_app(broker, f"redis://127.0.0.1:6379/{REDIS_RESULT_DB}")
        with recording() as rec:
            with worker(app):
                calls = publish_calls(app)
                ids = calls["ids"]
                wait_for(lambda: app.AsyncResult(ids["chord-body"]).ready(), "the chord body")
                wait_for(lambda: app.AsyncResult(ids["chain"][2]).ready(), "the chain's end")
                wait_for(lambda: app.AsyncResult(ids["apply_async-link"]).ready(), "the link")
                more = run_worker_calls(app)
            rpc_app = make_app(broker, "rpc://")
            rpc_id = rpc_app.tasks["protoapp.add"].delay(4, 4).id
    tasks = [
        p for p in rec.amqp if p["exchange"] == "" and "task" in p["properties"].get("headers", {})
    ]

    def by(key: str, value: str) -> list[dict[str, Any]]:
        return [p for p in tasks if p["properties"]["headers"].get(key) == value]

    for variant, description in TASK_CALLS.items():
        writer.write(
            f"amqp-task-{variant}.json",
            f"Task message (protocol v2) as published on AMQP by: {description}",
            **amqp_fixture(by("id", ids[variant])[0]),
            client_ids={"id": ids[variant]},
            sent_at=calls["sent_at"][variant],
        )
    canvas = (
        (
            "chain-first",
            ids["chain"][0],
            "the first message of chain(add.s(1,2), add.s(3),"
            " add.s(4)); the remaining steps in embed.chain, last step first",
        ),
        ("chain-second", ids["chain"][1], "the second chain step, published by the worker"),
        (
            "group-child",
            ids["group-children"][1],
            "one child of group(add.s(i,i) for i in range(3))",
        ),
        (
            "chord-header",
            ids["chord-header"][0],
            "one header task of chord([add.s(1,1),"
            " add.s(2,2)], tsum.s()); embed.chord carries the body",
        ),
        (
            "chord-body",
            ids["chord-body"],
            "the chord body, published by the worker that finished the last header task",
        ),
    )
    for name, tid, description in canvas:
        writer.write(f"amqp-canvas-{name}.json", description, **amqp_fixture(by("id", tid)[0]))
    callback = first(
        by("parent_id", ids["apply_async-link"]),
        lambda p: p["properties"]["headers"]["task"] == "protoapp.add",
        "the link callback",
    )
    writer.write(
        "amqp-task-link-callback-fired.json",
        "The link=add.s(100) callback as the worker published it after the parent returned 9:"
        " the parent's result is prepended to the signature's args",
        **amqp_fixture(callback),
    )
    original, republished = by("id", more["flaky"])[:2]
    writer.write(
        "amqp-task-retry-original.json",
        "flaky.delay(5): the original message (retries=0)",
        **amqp_fixture(original),
    )
    writer.write(
        "amqp-task-retry-republished.json",
        "The message the worker publishes on self.retry(countdown=2): same task id,"
        " retries=1, an eta, parent_id = its own id",
        **amqp_fixture(republished),
    )
    writer.write(
        "amqp-task-rpc-backend.json",
        "Task message sent with result_backend=rpc:// (reply_to = the client's oid queue)",
        **amqp_fixture(by("id", rpc_id)[0]),
    )


# -- main ----------------------------------------------------------------------------------


def clean_redis() -> None:
    """Empty the two DBs this script used (it refused to start unless they were empty)."""
    for db in (REDIS_BROKER_DB, REDIS_RESULT_DB):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            keys = list(client.scan_iter(count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def require_empty_dbs() -> None:
    for db in (REDIS_BROKER_DB, REDIS_RESULT_DB):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            if client.dbsize():
                raise SystemExit(f"capture: Redis DB {db} is not empty; it must be ours alone")
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    require_empty_dbs()
    writer = Writer(out)
    try:
        capture_redis(writer)
    finally:
        clean_redis()
    try:
        capture_amqp(writer)
    finally:
        clean_redis()
    print("\n".join(sorted(writer.written)))
    print(f"{len(writer.written)} files in {out}")


if __name__ == "__main__":
    os.environ.setdefault("FORKED_BY_MULTIPROCESSING", "0")
    main()
