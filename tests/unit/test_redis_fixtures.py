"""Every task message real Celery 5.7 put on Redis, read the way celeriac's Redis broker reads it.

Each fixture's ``value_raw`` is the list element exactly as Celery LPUSHed it (kombu RPUSHed
the restored one). It goes through ``kombu_redis.decode`` (what the Redis broker does with a
popped element) and ``parse_task_message`` (what the worker does with the envelope), and
then through a real worker on ``memory://``, with tasks registered under the fixtures' names.
No Redis server is needed. The fixtures are ``tests/fixtures/celery``
(``scripts/capture_celery_fixtures.py`` captures them again).

celeriac runs each message as one task: chains, chords and link callbacks carried in the
embed are parsed and kept, but not acted on (see docs/celery-compatibility.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.errors import TaskRevokedError
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.message import STANDARD_HEADERS, format_iso, parse_iso, parse_task_message
from celeriac.protocol.serialization import JSON
from celeriac.task import Request
from celeriac.transports.redis import kombu as kombu_redis
from celeriac.worker.execution import ETA_SLACK
from celeriac.worker.worker import Worker
from services import FIXTURES_DIR

RESTORED = "redis-transport-restored-message.json"
FIXTURE_NAMES = [
    *sorted(
        path.name
        for pattern in ("redis-task-*.json", "redis-canvas-*.json")
        for path in FIXTURES_DIR.glob(pattern)
    ),
    RESTORED,
]
ACCEPT = frozenset({JSON})


def _client_ids(name: str) -> dict[str, Any]:
    """The ids Celery's client returned for the call that produced fixture ``name`` (kept
    beside the message at capture), which the messages must carry."""
    ids: dict[str, Any] = json.loads((FIXTURES_DIR / name).read_text())["client_ids"]
    return ids


CHAIN_ID, CHAIN_STEP_2, CHAIN_STEP_3 = _client_ids("redis-canvas-chain-first.json")["chain"]
_CHORD = _client_ids("redis-canvas-chord-body.json")
CHORD_GROUP, CHORD_BODY, CHORD_HEADERS = _CHORD["group"], _CHORD["body"], _CHORD["header"]
GROUP = _client_ids("redis-canvas-group-child.json")["group"]
RETRIED = _client_ids("redis-task-retry-republished.json")["id"]

#: What each captured message must parse to, written out by hand from the Celery call that
#: produced it (the fixture's ``description``). Keys are :class:`TaskMessage` attributes,
#: plus ``queue`` (the list it was pushed to) and ``signatures`` (per embed key, the
#: ``(task, args, options.task_id)`` of each signature, in the order Celery sent them).
EXPECTED: dict[str, dict[str, Any]] = {
    "redis-task-delay.json": {"task": "protoapp.add", "args": [2, 3], "kwargs": {}},
    "redis-task-apply_async-kwargs.json": {"args": [], "kwargs": {"x": 1, "y": 2}},
    "redis-task-apply_async-countdown.json": {"args": [1, 1]},  # eta: test_countdown_...
    "redis-task-apply_async-eta.json": {
        "args": [1, 2],
        "eta": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        "expires": None,
    },
    "redis-task-apply_async-expires.json": {"args": [1, 3], "eta": None},  # expires: below
    "redis-task-apply_async-headers.json": {"args": [1, 7]},
    "redis-task-apply_async-link.json": {
        "args": [1, 8],
        "signatures": {
            "callbacks": [("protoapp.add", [100], None)],
            "errbacks": [("protoapp.on_error", [], None)],
        },
    },
    "redis-task-apply_async-priority.json": {"args": [1, 4], "priority": 9 - 7},
    "redis-task-apply_async-queue.json": {"args": [1, 5], "queue": "proto_other"},
    "redis-task-apply_async-task_id.json": {
        "id": "00000000-1111-2222-3333-444444444444",
        "root_id": "00000000-1111-2222-3333-444444444444",
        "args": [1, 6],
    },
    "redis-task-apply_async-time_limits.json": {
        "args": [1, 9],
        "time_limit": 60,
        "soft_time_limit": 50,
        "ignore_result": True,
    },
    "redis-task-send_task.json": {
        "task": "protoapp.add",
        "args": [20, 22],
        "ignore_result": False,  # send_task sends null: Celery's default applies
    },
    "redis-task-send_task-unregistered.json": {
        "task": "some.remote.task",
        "args": ["a"],
        "kwargs": {"b": 1},
        "queue": "proto_remote",
    },
    # The worker's LPUSH on self.retry(): the same task id, its parent is itself.
    "redis-task-retry-republished.json": {
        "task": "protoapp.flaky",
        "id": RETRIED,
        "args": [5],
        "retries": 1,
        "parent_id": RETRIED,
    },
    "redis-canvas-chain-first.json": {
        "id": CHAIN_ID,
        "args": [1, 2],
        "parent_id": None,
        "signatures": {  # the remaining steps, last step first
            "chain": [
                ("protoapp.add", [4], CHAIN_STEP_3),
                ("protoapp.add", [3], CHAIN_STEP_2),
            ]
        },
    },
    "redis-canvas-chain-second.json": {
        "id": CHAIN_STEP_2,
        "args": [3, 3],  # step 1's result prepended
        "root_id": CHAIN_ID,
        "parent_id": CHAIN_ID,
        "signatures": {"chain": [("protoapp.add", [4], CHAIN_STEP_3)]},
    },
    "redis-canvas-chord-header.json": {
        "args": [1, 1],
        "id": CHORD_HEADERS[0],
        "group": CHORD_GROUP,
        "group_index": 0,
        "signatures": {"chord": [("protoapp.tsum", [], CHORD_BODY)]},
    },
    "redis-canvas-chord-body.json": {
        "task": "protoapp.tsum",
        "id": CHORD_BODY,
        "args": [[2, 4]],  # the header's results, in header order
        "group": CHORD_GROUP,
        "group_index": None,
        "parent_id": CHORD_HEADERS[-1],  # the header task that finished last
    },
    "redis-canvas-group-child.json": {
        "args": [1, 1],
        "group": GROUP,
        "group_index": 1,
    },
    RESTORED: {
        "task": "protoapp.sleeper_late",
        "id": "bbbbbbbb-0000-0000-0000-0000000000b1",
        "args": [8],
    },
}

#: Custom (non-standard) headers each message must keep, as extra top-level headers.
CUSTOM_HEADERS: dict[str, dict[str, Any]] = {
    "redis-task-apply_async-headers.json": {"x_tenant": "acme", "x_trace": "abc123"},
    RESTORED: {"redelivered": True},  # kombu adds it when it restores a message
}

#: The value each task returns in the worker test (None: ``ignore_result``, nothing stored).
RESULTS: dict[str, Any] = {
    "redis-task-delay.json": 5,
    "redis-task-apply_async-kwargs.json": 3,
    "redis-task-apply_async-countdown.json": 2,
    "redis-task-apply_async-eta.json": 3,
    "redis-task-apply_async-expires.json": 4,
    "redis-task-apply_async-headers.json": 8,
    "redis-task-apply_async-link.json": 9,
    "redis-task-apply_async-priority.json": 5,
    "redis-task-apply_async-queue.json": 6,
    "redis-task-apply_async-task_id.json": 7,
    "redis-task-apply_async-time_limits.json": None,
    "redis-task-send_task.json": 42,
    "redis-task-send_task-unregistered.json": ["a", 1],
    "redis-task-retry-republished.json": 5,
    "redis-canvas-chain-first.json": 3,
    "redis-canvas-chain-second.json": 6,
    "redis-canvas-chord-header.json": 2,
    "redis-canvas-chord-body.json": 6,
    "redis-canvas-group-child.json": 2,
    RESTORED: 8,
}


@dataclass(frozen=True)
class Captured:
    name: str
    raw: str  # the list element, byte for byte
    envelope: dict[str, Any]  # raw, parsed
    body: list[Any]  # the base64 body, decoded and parsed
    redis_key: str  # the list it was pushed to

    @property
    def tag(self) -> str:
        return str(self.envelope["properties"]["delivery_tag"])

    @property
    def queue(self) -> str:
        return str(self.envelope["properties"]["delivery_info"]["routing_key"])


def load(name: str) -> Captured:
    fixture = json.loads((FIXTURES_DIR / name).read_text())
    raw = fixture.get("value_raw")
    if raw is None:
        # The restored message was captured as a parsed "envelope" only. kombu writes the
        # element with json.dumps' default separators, so that gives back its exact bytes.
        raw = json.dumps(fixture["envelope"])
    envelope = json.loads(raw)
    assert envelope == fixture["envelope"]
    body = json.loads(base64.b64decode(envelope["body"]))
    assert body == fixture.get("body_decoded", body)
    return Captured(name, raw, envelope, body, fixture["redis_key"])


def decode(captured: Captured) -> kombu_redis.RedisMessage:
    return kombu_redis.decode(captured.raw, captured.tag)


def test_every_fixture_is_checked() -> None:
    assert len(FIXTURE_NAMES) >= 20, f"fixtures not found in {FIXTURES_DIR}"
    assert set(FIXTURE_NAMES) == set(EXPECTED) == set(RESULTS)


# -- decode + parse ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_decode_gives_the_envelope_celery_sent(name: str) -> None:
    captured = load(name)
    message = decode(captured)
    properties = captured.envelope["properties"]
    assert message.tag == captured.tag
    assert message.raw == captured.envelope
    assert message.envelope.body == base64.b64decode(captured.envelope["body"])
    assert message.envelope.content_type == "application/json"
    assert message.envelope.content_encoding == "utf-8"
    assert message.envelope.headers == captured.envelope["headers"]
    # Celery's Redis priority p (lower first) is celeriac's 9 - p (higher first).
    assert message.priority == 9 - properties["priority"]
    assert message.redelivered is (name == RESTORED)
    # What belongs to the message is kept; what belongs to kombu's transport is not.
    transport = {"delivery_info", "body_encoding", "delivery_tag", "priority"}
    kept = {k: v for k, v in properties.items() if k not in transport}
    assert message.envelope.properties == {**kept, "priority": message.priority}
    assert kombu_redis.priority_of(message.raw) == message.priority
    # Published again with celeriac's priority, it lands on the list Celery used.
    assert kombu_redis.list_key(captured.queue, message.priority) == captured.redis_key


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_parse_gives_the_call_celery_made(name: str) -> None:
    captured = load(name)
    message = parse_task_message(decode(captured).envelope, ACCEPT)
    headers = captured.envelope["headers"]
    expected = dict(EXPECTED[name])
    assert expected.pop("queue", "celery") == captured.queue
    signatures = expected.pop("signatures", {})
    for attribute, value in expected.items():
        assert getattr(message, attribute) == value, attribute

    # Everything else as the captured headers and body say.
    assert message.task == headers["task"]
    assert message.id == headers["id"] == captured.envelope["properties"]["correlation_id"]
    assert [message.args, message.kwargs, message.embed] == captured.body
    assert message.retries == headers["retries"]
    assert message.eta == parse_iso(headers["eta"])
    assert message.expires == parse_iso(headers["expires"])
    assert [message.time_limit, message.soft_time_limit] == headers["timelimit"]
    assert message.root_id == headers["root_id"]
    assert message.parent_id == headers["parent_id"]
    assert message.group == headers["group"]
    assert message.group_index == headers["group_index"]
    assert message.ignore_result is bool(headers["ignore_result"])
    assert message.origin == headers["origin"] == "gen4242@host"
    assert message.reply_to == captured.envelope["properties"]["reply_to"]
    assert message.priority == 9 - captured.envelope["properties"]["priority"]
    assert message.headers == headers
    custom = {k: v for k, v in headers.items() if k not in STANDARD_HEADERS}
    assert custom == CUSTOM_HEADERS.get(name, {})

    for key in ("callbacks", "errbacks", "chain", "chord"):
        value = message.embed[key]
        found = [value] if isinstance(value, dict) else value
        wanted = signatures.get(key)
        assert _signatures(found) == wanted, key


def _signatures(
    value: list[dict[str, Any]] | None,
) -> list[tuple[str, list[Any], str | None]] | None:
    if value is None:
        return None
    return [(s["task"], s["args"], s["options"].get("task_id")) for s in value]


def test_eta_and_expires_are_aware_utc() -> None:
    countdown = parse_task_message(
        decode(load("redis-task-apply_async-countdown.json")).envelope, ACCEPT
    )
    expires = parse_task_message(
        decode(load("redis-task-apply_async-expires.json")).envelope, ACCEPT
    )
    assert countdown.eta is not None and countdown.eta.tzinfo is UTC
    assert expires.expires is not None and expires.expires.tzinfo is UTC


@pytest.mark.parametrize(
    ("name", "header", "seconds"),
    [
        ("redis-task-apply_async-countdown.json", "eta", 30),
        ("redis-task-apply_async-expires.json", "expires", 120),
    ],
)
def test_relative_times_become_absolute_from_the_send(name: str, header: str, seconds: int) -> None:
    # countdown=30 and expires=120 travel as absolute times: that many seconds after the call
    # (``sent_at``, taken just before it at capture).
    sent_at = datetime.fromisoformat(json.loads((FIXTURES_DIR / name).read_text())["sent_at"])
    message = parse_task_message(decode(load(name)).envelope, ACCEPT)
    when = getattr(message, header)
    assert when is not None
    assert timedelta(seconds=seconds) <= when - sent_at < timedelta(seconds=seconds + 1)


def test_expires_keeps_the_expiration_property() -> None:
    # Celery adds "expiration" (ms, a string) next to the expires header; it means nothing
    # on Redis but is message data, so it survives decoding (and re-encoding).
    message = decode(load("redis-task-apply_async-expires.json"))
    assert message.envelope.properties["expiration"] == "120000"


# -- through a worker on memory:// -------------------------------------------------------------


@dataclass
class Ran:
    request: Request
    at: float  # unix time the task started


class ProtoApp:
    """An app with the fixtures' task names; each task records its request when it runs."""

    def __init__(self) -> None:
        self.app = Celery("protoapp", broker=f"memory://{uuid.uuid4().hex}")
        self.ran: dict[str, Ran] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ran_one = asyncio.Event()
        app = self.app

        @app.task(name="protoapp.add", bind=True)
        async def add(task: Any, x: int, y: int) -> int:
            self._record(task.request)
            return x + y

        @app.task(name="protoapp.tsum", bind=True)
        async def tsum(task: Any, numbers: list[int]) -> int:
            self._record(task.request)
            return sum(numbers)

        @app.task(name="protoapp.flaky", bind=True)
        async def flaky(task: Any, n: int) -> int:
            self._record(task.request)
            return n

        @app.task(name="protoapp.sleeper_late", bind=True, acks_late=True)
        def sleeper_late(task: Any, seconds: float) -> float:  # sync: runs on a thread
            self._record(task.request)
            return seconds  # without the sleep

        @app.task(name="some.remote.task", bind=True)
        async def remote(task: Any, a: str, b: int) -> list[Any]:
            self._record(task.request)
            return [a, b]

    def _record(self, request: Request) -> None:
        # Sync tasks run on the worker's threads: wake the test's loop thread-safely.
        self.ran[request.id] = Ran(request, time.time())
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._ran_one.set)

    async def run(
        self, envelope: Envelope, queue: str, priority: int
    ) -> tuple[Any, dict[str, Any] | None]:
        """Publish ``envelope`` as Celery did and run a worker until the task has an outcome.

        Returns the task's value (None when ``ignore_result``) and its stored record. The
        message is pushed at once, ETA or not, as on Redis: the worker defers it itself.
        """
        app = self.app
        task_id = envelope.headers["id"]
        self._loop = asyncio.get_running_loop()
        value: Any = None
        async with app.setup():
            await (await app.connection()).broker.publish(queue, envelope, priority=priority)
            worker = Worker(app, queues=[queue], concurrency=2)
            running = asyncio.get_running_loop().create_task(worker.run())
            try:
                if envelope.headers.get("ignore_result"):
                    await asyncio.wait_for(self._ran_one.wait(), 5)  # nothing stored
                else:
                    value = await app.AsyncResult(task_id).get(timeout=5, propagate=False)
            finally:
                worker.stop()  # graceful: the message is settled before this returns
                await asyncio.wait_for(running, 10)
        async with app.setup():
            meta = await (await app.connection()).backend.get(task_id)
        return value, meta


def _prepared(name: str) -> tuple[Envelope, datetime | None]:
    """The decoded envelope, with the headers whose captured time would make the test depend
    on today's date moved to now. Returns it with the ETA it was given, if any."""
    envelope = decode(load(name)).envelope
    now = datetime.now(UTC)
    eta = None
    if name == "redis-task-apply_async-eta.json":  # 2030: deferred, but not for years
        eta = now + timedelta(seconds=0.3)
        envelope.headers["eta"] = format_iso(eta)
    elif name == "redis-task-apply_async-expires.json":  # expired since the capture
        envelope.headers["expires"] = format_iso(now + timedelta(seconds=60))
    return envelope, eta


@pytest.mark.parametrize("name", FIXTURE_NAMES)
async def test_a_worker_runs_it(name: str) -> None:
    captured = load(name)
    message = decode(captured)
    envelope, eta = _prepared(name)
    parsed = parse_task_message(envelope, ACCEPT)
    proto = ProtoApp()
    value, meta = await proto.run(envelope, captured.queue, message.priority)

    # It ran first (a canvas message's later steps and callbacks may follow it: the worker
    # publishes them), with the message's arguments and metadata.
    assert next(iter(proto.ran)) == parsed.id
    request = proto.ran[parsed.id].request
    assert (request.task, request.args, request.kwargs) == (
        parsed.task,
        parsed.args,
        parsed.kwargs,
    )
    assert request.retries == parsed.retries
    assert (request.root_id, request.parent_id, request.group) == (
        parsed.root_id,
        parsed.parent_id,
        parsed.group,
    )
    assert (request.eta, request.expires) == (parsed.eta, parsed.expires)
    assert (request.time_limit, request.soft_time_limit) == (
        parsed.time_limit,
        parsed.soft_time_limit,
    )
    assert request.origin == "gen4242@host"
    assert request.reply_to == captured.envelope["properties"]["reply_to"]
    assert request.delivery_info["routing_key"] == captured.queue
    assert request.delivery_info["priority"] == message.priority
    assert request.headers == envelope.headers
    for key, header in CUSTOM_HEADERS.get(name, {}).items():
        assert request.headers[key] == header
    if eta is not None:
        assert proto.ran[parsed.id].at >= eta.timestamp() - ETA_SLACK  # deferred until due

    # Its outcome is stored as Celery stores it (or not at all with ignore_result).
    expected = RESULTS[name]
    if expected is None:
        assert parsed.ignore_result is True
        assert meta is None
        return
    assert value == expected
    assert meta is not None
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == expected
    assert meta["task_id"] == parsed.id
    assert meta.get("parent_id") == parsed.parent_id
    assert meta.get("group_id") == parsed.group


async def test_a_message_past_its_expiry_is_revoked_not_run() -> None:
    # As captured: it expired 120 s after the capture, long gone by now.
    captured = load("redis-task-apply_async-expires.json")
    message = decode(captured)
    expires = parse_iso(message.envelope.headers["expires"])
    assert expires is not None and expires < datetime.now(UTC)
    proto = ProtoApp()
    value, meta = await proto.run(message.envelope, captured.queue, message.priority)
    assert proto.ran == {}
    assert isinstance(value, TaskRevokedError)
    assert meta is not None and meta["status"] == states.REVOKED
