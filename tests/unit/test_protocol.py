"""Protocol v2 task messages, checked against messages captured from real Celery 5.7.

Every task message in ``tests/fixtures/celery`` must parse, and rebuilding it from the
parsed fields must give back Celery's headers (values and key order), body bytes and
properties. ``scripts/capture_celery_fixtures.py`` captures them again.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from celeriac.errors import ContentDisallowed, ProtocolError
from celeriac.protocol import message as protocol
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.message import (
    STANDARD_HEADERS,
    TaskMessage,
    build_task_message,
    format_iso,
    parse_iso,
    parse_task_message,
)
from celeriac.protocol.serialization import JSON, MSGPACK, PICKLE
from services import FIXTURES_DIR

TASK_FIXTURE_GLOBS = (
    "amqp-task-*.json",
    "amqp-canvas-*.json",
    "redis-task-*.json",
    "redis-canvas-*.json",
)
# Not named as a task fixture, but it is one: a message restored by kombu, which adds a
# non-standard top-level "redelivered" header. A good test of unknown headers.
EXTRA_TASK_FIXTURES = ("redis-transport-restored-message.json",)
# app.send_task(args=[...]) gets a *list*, and Celery reprs args as given ("[20, 22]"),
# where delay()/apply_async((...)) give a tuple ("(2, 3)"). These also leave
# ignore_result None (send_task's default), which celeriac cannot send: see below.
SEND_TASK_FIXTURES = frozenset(
    {
        "amqp-task-send_task.json",
        "amqp-task-send_task-unregistered.json",
        "redis-task-send_task.json",
        "redis-task-send_task-unregistered.json",
    }
)
ACCEPT = frozenset({JSON})


@dataclass(frozen=True)
class Vector:
    name: str
    transport: str
    envelope: Envelope
    headers: dict[str, Any]
    properties: dict[str, Any]
    body_raw: bytes
    body_decoded: list[Any]


def _load_vector(path: Path) -> Vector:
    fixture = json.loads(path.read_text())
    if "envelope" in fixture:  # Redis: a JSON envelope with a base64 body
        raw = fixture["envelope"]
        body = base64.b64decode(raw["body"])
        envelope = Envelope(
            body=body,
            content_type=raw["content-type"],
            content_encoding=raw["content-encoding"],
            headers=raw["headers"],
            properties=raw["properties"],
        )
        transport = "redis"
    else:  # AMQP: basic properties with a headers table, and the exact body string
        properties = dict(fixture["properties"])
        headers = properties.pop("headers")
        content_type = properties.pop("content_type")
        content_encoding = properties.pop("content_encoding")
        body = fixture["body_raw"].encode("utf-8")
        envelope = Envelope(body, content_type, content_encoding, headers, properties)
        transport = "amqp"
    decoded = fixture.get("body_decoded", json.loads(body))
    return Vector(
        name=path.name,
        transport=transport,
        envelope=envelope,
        headers=envelope.headers,
        properties=envelope.properties,
        body_raw=body,
        body_decoded=decoded,
    )


def _task_fixture_paths() -> list[Path]:
    paths = {p for pattern in TASK_FIXTURE_GLOBS for p in FIXTURES_DIR.glob(pattern)}
    paths.update(FIXTURES_DIR / name for name in EXTRA_TASK_FIXTURES)
    return sorted(p for p in paths if p.exists())


VECTORS = [_load_vector(p) for p in _task_fixture_paths()]


def test_the_fixtures_are_there() -> None:
    assert FIXTURES_DIR.is_dir(), f"fixtures not found at {FIXTURES_DIR}"
    assert len(VECTORS) > 20
    assert {v.transport for v in VECTORS} == {"amqp", "redis"}


# -- parsing every captured message ------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_fixture_parses(vector: Vector) -> None:
    message = parse_task_message(vector.envelope, ACCEPT)
    headers, body = vector.headers, vector.body_decoded

    assert message.task == headers["task"]
    assert message.id == headers["id"]
    assert message.args == body[0]
    assert message.kwargs == body[1]
    assert message.embed == body[2]
    assert list(message.embed) == ["callbacks", "errbacks", "chain", "chord"]
    assert message.retries == headers["retries"]
    assert message.root_id == headers["root_id"]
    assert message.parent_id == headers["parent_id"]
    assert message.group == headers["group"]
    assert message.group_index == headers["group_index"]
    assert message.origin == headers["origin"]
    # send_task leaves ignore_result null; Celery's worker reads that as False.
    assert message.ignore_result is bool(headers["ignore_result"])
    assert [message.time_limit, message.soft_time_limit] == headers["timelimit"]
    for name in ("eta", "expires"):
        value = getattr(message, name)
        if headers[name] is None:
            assert value is None
        else:
            assert value is not None and value.tzinfo is not None
            assert format_iso(value) == headers[name]
    assert message.reply_to == vector.properties["reply_to"]
    # The AMQP message routed to an unconfigured queue has no priority property.
    assert message.priority == vector.properties.get("priority")
    # Every header is kept, unknown ones included, in the order it came in.
    assert message.headers == headers
    assert list(message.headers) == list(headers)


# -- rebuilding every captured message -----------------------------------------------------


def _rebuild(message: TaskMessage, vector: Vector) -> Envelope:
    custom = {k: v for k, v in message.headers.items() if k not in STANDARD_HEADERS}
    return build_task_message(
        message.task,
        message.id,
        message.args if vector.name in SEND_TASK_FIXTURES else tuple(message.args),
        message.kwargs,
        eta=message.eta,
        expires=message.expires,
        retries=message.retries,
        time_limit=message.time_limit,
        soft_time_limit=message.soft_time_limit,
        root_id=message.root_id,
        parent_id=message.parent_id,
        group=message.group,
        group_index=message.group_index,
        ignore_result=message.ignore_result,
        origin=message.origin,
        reply_to=message.reply_to or "",
        # No priority property (unconfigured AMQP queue): celeriac always sends one, 0.
        priority=0 if message.priority is None else message.priority,
        shadow=message.headers["shadow"],
        headers=custom,
        callbacks=message.embed["callbacks"],
        errbacks=message.embed["errbacks"],
        chain=message.embed["chain"],
        chord=message.embed["chord"],
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_fixture_rebuilds_identically(vector: Vector, monkeypatch: pytest.MonkeyPatch) -> None:
    message = parse_task_message(vector.envelope, ACCEPT)
    expiration = vector.properties.get("expiration")
    if expiration is not None:
        # The expiration property is "expires minus now": replay the capture's clock.
        assert message.expires is not None
        captured_at = message.expires - timedelta(milliseconds=int(expiration))
        monkeypatch.setattr(protocol, "_utcnow", lambda: captured_at)

    rebuilt = _rebuild(message, vector)

    expected = dict(vector.headers)
    if vector.name in SEND_TASK_FIXTURES:
        # Celery's send_task sends ignore_result null; celeriac always sends a bool, and
        # null and false mean the same to every worker.
        assert expected["ignore_result"] is None
        expected["ignore_result"] = False
    assert list(rebuilt.headers) == list(expected), "header keys or their order differ"
    for key, value in expected.items():
        assert rebuilt.headers[key] == value, f"header {key!r}"
        assert json.dumps(rebuilt.headers[key]) == json.dumps(value), f"header {key!r} type"
    assert json.dumps(rebuilt.headers) == json.dumps(expected)

    # Byte for byte. (The Redis fixtures' base64 bodies are json.dumps output too.)
    assert rebuilt.body == vector.body_raw
    assert (rebuilt.content_type, rebuilt.content_encoding) == (
        vector.envelope.content_type,
        vector.envelope.content_encoding,
    )

    props = vector.properties
    assert rebuilt.properties["correlation_id"] == props["correlation_id"] == message.id
    assert rebuilt.properties["reply_to"] == props["reply_to"]
    assert rebuilt.properties["delivery_mode"] == props["delivery_mode"] == 2
    if "priority" in props:
        assert rebuilt.properties["priority"] == props["priority"]
    else:
        assert vector.name == "amqp-task-apply_async-queue.json"
        assert rebuilt.properties["priority"] == 0
    assert ("expiration" in rebuilt.properties) is (expiration is not None)
    assert rebuilt.properties.get("expiration") == expiration
    if vector.transport == "redis":
        # kombu keeps the producer's property order (py-amqp's trace reorders it).
        assert list(rebuilt.properties) == [k for k in props if k in rebuilt.properties]


# -- building ------------------------------------------------------------------------------


def test_build_defaults() -> None:
    envelope = build_task_message("proj.add", "id-1", (2, 3))
    assert envelope.headers == {
        "lang": "py",
        "task": "proj.add",
        "id": "id-1",
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": "id-1",
        "parent_id": None,
        "argsrepr": "(2, 3)",
        "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    assert list(envelope.headers) == list(STANDARD_HEADERS)
    assert envelope.properties == {
        "correlation_id": "id-1",
        "reply_to": "",
        "delivery_mode": 2,
        "priority": 0,
    }
    assert list(envelope.properties) == ["correlation_id", "reply_to", "delivery_mode", "priority"]
    assert envelope.body == (
        b'[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    )
    assert (envelope.content_type, envelope.content_encoding) == (JSON, "utf-8")


def test_build_time_limits_are_hard_then_soft() -> None:
    envelope = build_task_message("t", "i", time_limit=60, soft_time_limit=50)
    assert envelope.headers["timelimit"] == [60, 50]
    message = parse_task_message(envelope, ACCEPT)
    assert (message.time_limit, message.soft_time_limit) == (60, 50)


def test_build_root_id_and_origin_given() -> None:
    envelope = build_task_message("t", "i", root_id="root", parent_id="p", origin="w1@host")
    assert envelope.headers["root_id"] == "root"
    assert envelope.headers["parent_id"] == "p"
    assert envelope.headers["origin"] == "w1@host"


def test_default_origin_follows_the_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getpid", lambda: 111)
    assert build_task_message("t", "i").headers["origin"] == f"gen111@{socket.gethostname()}"
    monkeypatch.setattr(os, "getpid", lambda: 222)  # as after a fork
    assert build_task_message("t", "i").headers["origin"] == f"gen222@{socket.gethostname()}"


def test_default_origin_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_task_message("t", "i").headers["origin"]
    monkeypatch.setattr(socket, "gethostname", lambda: "changed")
    assert build_task_message("t", "i").headers["origin"] == first


def test_build_eta_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(protocol, "_utcnow", lambda: now)
    plus_two = timezone(timedelta(hours=2))
    envelope = build_task_message(
        "t",
        "i",
        eta=datetime(2030, 1, 2, 3, 4, 5),  # naive: UTC
        expires=datetime(2030, 1, 1, 2, 2, 0, 500, tzinfo=plus_two),  # 00:02:00.0005 UTC
    )
    assert envelope.headers["eta"] == "2030-01-02T03:04:05+00:00"
    assert envelope.headers["expires"] == "2030-01-01T00:02:00.000500+00:00"
    assert envelope.properties["expiration"] == "120000"
    assert list(envelope.properties) == [
        "correlation_id",
        "reply_to",
        "delivery_mode",
        "expiration",
        "priority",
    ]


def test_build_expiration_in_the_past_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "_utcnow", lambda: datetime(2030, 1, 1, tzinfo=UTC))
    envelope = build_task_message("t", "i", expires=datetime(2029, 1, 1, tzinfo=UTC))
    assert envelope.properties["expiration"] == "0"


def test_build_without_expires_has_no_expiration() -> None:
    assert "expiration" not in build_task_message("t", "i").properties


def test_build_custom_headers_come_last() -> None:
    envelope = build_task_message("t", "i", headers={"x_tenant": "acme", "x_n": 1})
    assert list(envelope.headers)[-3:] == ["stamps", "x_tenant", "x_n"]
    assert envelope.headers["x_tenant"] == "acme"


@pytest.mark.parametrize("key", ["task", "id", "retries", "stamps", "lang"])
def test_build_custom_header_cannot_override(key: str) -> None:
    with pytest.raises(ValueError, match=f"custom header '{key}'"):
        build_task_message("t", "i", headers={key: "x"})


def test_build_requires_names() -> None:
    with pytest.raises(ValueError, match="task name"):
        build_task_message("", "i")
    with pytest.raises(ValueError, match="task_id"):
        build_task_message("t", "")


def test_build_argsrepr() -> None:
    assert build_task_message("t", "i", (5,)).headers["argsrepr"] == "(5,)"
    assert build_task_message("t", "i", ["a"]).headers["argsrepr"] == "['a']"
    assert build_task_message("t", "i", kwargs={"x": 1}).headers["kwargsrepr"] == "{'x': 1}"


def test_build_argsrepr_is_truncated() -> None:
    envelope = build_task_message("t", "i", ("x" * 5000,), {"k": "y" * 5000})
    for key in ("argsrepr", "kwargsrepr"):
        assert len(envelope.headers[key]) == 1024
        assert envelope.headers[key].endswith("...")
    assert envelope.headers["argsrepr"].startswith("('xxx")
    assert json.loads(envelope.body)[0] == ["x" * 5000]  # the args themselves are whole


def test_build_embed() -> None:
    sig: dict[str, Any] = {
        "task": "t2",
        "args": [],
        "kwargs": {},
        "options": {},
        "subtask_type": None,
    }
    envelope = build_task_message("t", "i", callbacks=[sig], chain=[sig, sig], chord=sig)
    assert json.loads(envelope.body)[2] == {
        "callbacks": [sig],
        "errbacks": None,
        "chain": [sig, sig],
        "chord": sig,
    }


@pytest.mark.parametrize(("serializer", "content_type"), [("msgpack", MSGPACK), ("pickle", PICKLE)])
def test_build_and_parse_binary_serializers(serializer: str, content_type: str) -> None:
    envelope = build_task_message("t", "i", (1, b"\x00"), {"k": [1.5]}, serializer=serializer)
    assert (envelope.content_type, envelope.content_encoding) == (content_type, "binary")
    message = parse_task_message(envelope, {content_type})
    assert message.args == [1, b"\x00"]
    assert message.kwargs == {"k": [1.5]}


def test_build_then_parse_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    envelope = build_task_message(
        "proj.t",
        "id-9",
        [1, "two"],
        {"three": 3.0},
        eta=datetime(2030, 1, 2, tzinfo=UTC),
        expires=datetime(2030, 1, 3, tzinfo=UTC),
        retries=2,
        time_limit=10.5,
        soft_time_limit=None,
        root_id="r",
        parent_id="p",
        group="g",
        group_index=4,
        ignore_result=True,
        origin="o",
        reply_to="reply",
        priority=6,
        shadow="alias",
        headers={"x": {"nested": [1]}},
    )
    message = parse_task_message(envelope, ACCEPT)
    assert message == TaskMessage(
        task="proj.t",
        id="id-9",
        args=[1, "two"],
        kwargs={"three": 3.0},
        embed={"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        retries=2,
        eta=datetime(2030, 1, 2, tzinfo=UTC),
        expires=datetime(2030, 1, 3, tzinfo=UTC),
        time_limit=10.5,
        soft_time_limit=None,
        root_id="r",
        parent_id="p",
        group="g",
        group_index=4,
        ignore_result=True,
        origin="o",
        reply_to="reply",
        priority=6,
        headers=envelope.headers,
    )
    assert message.headers["shadow"] == "alias"
    assert message.headers["x"] == {"nested": [1]}


# -- parsing: what is optional -------------------------------------------------------------


def _envelope(
    headers: Any = None,
    body: Any = ([1], {}, None),
    *,
    raw: bytes | None = None,
    content_type: str = JSON,
    content_encoding: str = "utf-8",
    properties: Any = None,
) -> Envelope:
    if headers is None:
        headers = {"task": "t", "id": "i"}
    data = raw if raw is not None else json.dumps(body).encode()
    return Envelope(data, content_type, content_encoding, headers, properties or {})


def test_minimal_message_takes_celerys_defaults() -> None:
    message = parse_task_message(_envelope(), ACCEPT)
    assert message == TaskMessage(
        task="t",
        id="i",
        args=[1],
        kwargs={},
        embed={"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        retries=0,
        eta=None,
        expires=None,
        time_limit=None,
        soft_time_limit=None,
        root_id=None,
        parent_id=None,
        group=None,
        group_index=None,
        ignore_result=False,
        origin=None,
        reply_to=None,
        priority=None,
        headers={"task": "t", "id": "i"},
    )


def test_null_optional_headers_take_the_defaults() -> None:
    headers = {"task": "t", "id": "i", "retries": None, "timelimit": None, "ignore_result": None}
    message = parse_task_message(_envelope(headers), ACCEPT)
    assert (message.retries, message.time_limit, message.ignore_result) == (0, None, False)


def test_unknown_headers_and_embed_keys_are_kept() -> None:
    headers = {"task": "t", "id": "i", "x_custom": [1, {"a": None}]}
    body = [[], {}, {"callbacks": None, "future_key": 1}]
    message = parse_task_message(_envelope(headers, body), ACCEPT)
    assert message.headers["x_custom"] == [1, {"a": None}]
    assert message.embed == {
        "callbacks": None,
        "errbacks": None,
        "chain": None,
        "chord": None,
        "future_key": 1,
    }


def test_pickled_tuples_are_accepted() -> None:
    # Celery's pickle serializer keeps the body and args as tuples.
    data = pickle.dumps(((1, 2), {"k": 1}, None))
    envelope = _envelope(raw=data, content_type=PICKLE, content_encoding="binary")
    message = parse_task_message(envelope, {PICKLE})
    assert message.args == [1, 2]


@pytest.mark.parametrize(
    ("properties", "priority", "reply_to"),
    [
        ({"priority": 9, "reply_to": "r"}, 9, "r"),
        ({"priority": "9", "reply_to": 5}, None, None),
        ({"priority": True}, None, None),
        ({}, None, None),
    ],
)
def test_priority_and_reply_to_come_from_properties(
    properties: dict[str, Any], priority: int | None, reply_to: str | None
) -> None:
    message = parse_task_message(_envelope(properties=properties), ACCEPT)
    assert (message.priority, message.reply_to) == (priority, reply_to)


# -- parsing: malformed messages -----------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {"task": "t", "id": "i"}
    for key, value in changes.items():
        if value is _DROP:
            headers.pop(key)
        else:
            headers[key] = value
    return headers


_DROP = object()

MALFORMED_HEADERS = [
    (_with(task=_DROP), "header 'task' is missing"),
    (_with(id=_DROP), "header 'id' is missing"),
    (_with(task=5), "header 'task' must be a string, got int"),
    (_with(id=None), "header 'id' must be a string, got null"),
    (_with(task=""), "header 'task' is an empty string"),
    (_with(retries="1"), "header 'retries' must be an integer or null, got str"),
    (_with(retries=True), "header 'retries' must be an integer or null, got bool"),
    (_with(retries=-1), "header 'retries' must not be negative"),
    (_with(retries=1.0), "header 'retries' must be an integer or null, got float"),
    (_with(group_index="0"), "header 'group_index' must be an integer or null"),
    (_with(timelimit=[1]), "header 'timelimit' must be [hard, soft]"),
    (_with(timelimit="60"), "header 'timelimit' must be [hard, soft]"),
    (_with(timelimit=[1, 2, 3]), "header 'timelimit' must be [hard, soft]"),
    (_with(timelimit=["60", None]), "header 'timelimit' must hold numbers or nulls, got str"),
    (_with(timelimit=[None, False]), "header 'timelimit' must hold numbers or nulls, got bool"),
    (_with(timelimit=[float("nan"), None]), "non-negative finite seconds, got nan"),
    (_with(timelimit=[float("inf"), None]), "non-negative finite seconds, got inf"),
    (_with(timelimit=[-1, None]), "non-negative finite seconds, got -1"),
    (_with(eta="tomorrow"), "header 'eta' is not an ISO 8601 datetime: 'tomorrow'"),
    (_with(expires="2030-13-01T00:00:00"), "header 'expires' is not an ISO 8601 datetime"),
    (_with(eta=1893456000), "header 'eta' must be an ISO 8601 string or null, got int"),
    (_with(expires="9999-12-31T23:59:59-01:00"), "header 'expires' is not an ISO 8601"),
    (_with(ignore_result="yes"), "header 'ignore_result' must be true, false or null"),
    (_with(root_id=1), "header 'root_id' must be a string or null, got int"),
    (_with(parent_id=[]), "header 'parent_id' must be a string or null, got list"),
    (_with(group={}), "header 'group' must be a string or null, got dict"),
    (_with(origin=1.5), "header 'origin' must be a string or null, got float"),
    (_with(shadow=0), "header 'shadow' must be a string or null, got int"),
]


@pytest.mark.parametrize(("headers", "reason"), MALFORMED_HEADERS, ids=lambda x: str(x)[:60])
def test_malformed_headers(headers: dict[str, Any], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_task_message(_envelope(headers), ACCEPT)
    assert reason in str(info.value)


def test_headers_must_be_a_dict() -> None:
    with pytest.raises(ProtocolError, match="headers must be a dict, got list"):
        parse_task_message(_envelope(headers=[("task", "t")]), ACCEPT)


MALFORMED_BODIES: list[tuple[Any, str]] = [
    ({"task": "t", "args": [], "kwargs": {}}, "protocol v1"),
    ("[1, {}, null]", "must be a list [args, kwargs, embed], got str"),
    (None, "must be a list [args, kwargs, embed], got null"),
    ([[], {}], "list of 3 items [args, kwargs, embed], got 2 items"),
    ([[], {}, None, None], "got 4 items"),
    ([], "got 0 items"),
    ([{}, {}, None], "args (body[0]) must be a list, got dict"),
    (["ab", {}, None], "args (body[0]) must be a list, got str"),
    ([[], [], None], "kwargs (body[1]) must be a dict, got list"),
    ([[], None, None], "kwargs (body[1]) must be a dict, got null"),
    ([[], {}, []], "embed (body[2]) must be a dict or null, got list"),
    ([[], {}, {"callbacks": "t"}], "embed 'callbacks' must be a list of signature dicts"),
    ([[], {}, {"errbacks": {"task": "t"}}], "embed 'errbacks' must be a list of signature"),
    ([[], {}, {"chain": [1]}], "embed 'chain' must hold signature dicts, got an item of type int"),
    ([[], {}, {"chord": ["x"]}], "embed 'chord' must be a signature dict or null, got list"),
]


@pytest.mark.parametrize(("body", "reason"), MALFORMED_BODIES, ids=lambda x: str(x)[:60])
def test_malformed_bodies(body: Any, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_task_message(_envelope(body=body), ACCEPT)
    assert reason in str(info.value)


def test_kwargs_keys_must_be_strings() -> None:
    data = pickle.dumps([[], {1: "x"}, None])
    envelope = _envelope(raw=data, content_type=PICKLE, content_encoding="binary")
    with pytest.raises(ProtocolError, match=r"kwargs \(body\[1\]\) keys must be strings"):
        parse_task_message(envelope, {PICKLE})


@pytest.mark.parametrize(
    ("raw", "encoding", "reason"),
    [
        (b"", "utf-8", "not valid JSON"),
        (b"[[], {}, ", "utf-8", "not valid JSON"),
        (b"\xff\xfe", "utf-8", "not valid utf-8"),
        (b"[[], {}, null]", "no-such-codec", "unknown content encoding"),
    ],
)
def test_undecodable_bodies(raw: bytes, encoding: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_task_message(_envelope(raw=raw, content_encoding=encoding), ACCEPT)


def test_content_type_must_be_accepted() -> None:
    envelope = build_task_message("t", "i", serializer="msgpack")
    with pytest.raises(ContentDisallowed, match="'application/x-msgpack' is not accepted"):
        parse_task_message(envelope, ACCEPT)


def test_headers_are_checked_before_the_body() -> None:
    envelope = _envelope(_with(task=_DROP), raw=b"not json")
    with pytest.raises(ProtocolError, match="'task' is missing"):
        parse_task_message(envelope, ACCEPT)


# -- ISO 8601 helpers ----------------------------------------------------------------------


def test_format_iso() -> None:
    assert format_iso(datetime(2030, 1, 2, 3, 4, 5)) == "2030-01-02T03:04:05+00:00"
    assert format_iso(datetime(2030, 1, 2, 3, 4, 5, 62520, tzinfo=UTC)) == (
        "2030-01-02T03:04:05.062520+00:00"
    )
    minus_five = timezone(timedelta(hours=-5))
    assert format_iso(datetime(2030, 1, 1, 22, tzinfo=minus_five)) == "2030-01-02T03:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-02T03:04:05+00:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T05:04:05.5+02:00", datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
    ],
)
def test_parse_iso(text: str, expected: datetime) -> None:
    parsed = parse_iso(text)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


def test_parse_iso_none_and_datetimes() -> None:
    assert parse_iso(None) is None
    assert parse_iso(datetime(2030, 1, 1)) == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["", "soon", "2030-02-30", "0001-01-01T00:00:00+01:00"])
def test_parse_iso_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_iso(bad)


def test_iso_round_trip() -> None:
    for text in ("2026-11-21T11:22:12.062520+00:00", "2030-01-02T03:04:05+00:00"):
        parsed = parse_iso(text)
        assert parsed is not None
        assert format_iso(parsed) == text


class _Point(NamedTuple):
    x: int
    y: int


BATCH_CALLS: list[tuple[str, Any, Any]] = [
    ("id-0", (1, 2), {}),
    ("id-1", [3], {"y": 4}),
    ("id-2", (), {"x": "ünï", "y": [1, {"z": None}]}),
    ("id-3", ("x" * 2000,), {}),  # a repr cut to ARGSREPR_MAXSIZE
    ("id-4", _Point(1, 2), {}),  # shown as a plain tuple, as Celery shows it
]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"root_id": "root", "parent_id": "parent", "headers": {"x_tenant": "acme"}},
        {
            "eta": datetime(2030, 1, 2, tzinfo=UTC),
            "expires": datetime(2030, 1, 1, 0, 5, tzinfo=UTC),
            "time_limit": 30,
            "soft_time_limit": 20,
            "priority": 7,
            "ignore_result": True,
        },
        {"serializer": "msgpack"},
    ],
    ids=["plain", "root-and-headers", "times-and-priority", "msgpack"],
)
def test_build_many_is_build_one_by_one(
    options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "_utcnow", lambda: datetime(2030, 1, 1, tzinfo=UTC))
    many = protocol.build_task_messages("t", BATCH_CALLS, **options)
    one_by_one = [
        build_task_message("t", task_id, args, kwargs, **options)
        for task_id, args, kwargs in BATCH_CALLS
    ]
    assert many == one_by_one
    for built, expected in zip(many, one_by_one, strict=True):
        assert list(built.headers) == list(expected.headers)
        assert list(built.properties) == list(expected.properties)
    # What the messages share is the same objects (what lets brokers write it once).
    assert many[1].headers["timelimit"] is many[0].headers["timelimit"]
    assert many[1].headers["id"] == "id-1"


def test_build_many_of_nothing_and_bad_ids() -> None:
    assert protocol.build_task_messages("t", []) == []
    with pytest.raises(ValueError, match="task_id must be a non-empty string"):
        protocol.build_task_messages("t", [("a", (), {}), ("", (), {})])
