"""Celery's events as celeriac builds and reads them, against events Celery 5.7 sent
(``tests/fixtures/celery-events/``, captured on Redis and RabbitMQ): each type has Celery's
field names, in Celery's order, with values of Celery's types; every captured message parses."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from celeriac.errors import ProtocolError
from celeriac.protocol import events
from celeriac.protocol.envelope import Envelope

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-events"
COMMON = ("hostname", "utcoffset", "pid", "clock")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def captured_envelopes() -> list[tuple[str, Envelope, str]]:
    """Each captured message as a transport hands it over: (fixture, envelope, routing key)."""
    found = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = load(path.name)
        if "envelope" in data:  # Redis: the kombu envelope, base64 body
            raw = data["envelope"]
            found.append(
                (
                    path.name,
                    Envelope(
                        base64.b64decode(raw["body"]),
                        raw["content-type"],
                        raw["content-encoding"],
                        raw["headers"],
                        {"delivery_mode": raw["properties"]["delivery_mode"]},
                    ),
                    raw["properties"]["delivery_info"]["routing_key"],
                )
            )
        elif "body_raw" in data:  # AMQP: the body and the basic properties
            props = data["properties"]
            found.append(
                (
                    path.name,
                    Envelope(
                        data["body_raw"].encode(),
                        props["content_type"],
                        props["content_encoding"],
                        props["headers"],
                        {"delivery_mode": props["delivery_mode"]},
                    ),
                    data["routing_key"],
                )
            )
        for message in data.get("messages", ()):  # wave 2, AMQP
            body = json.dumps(message["body_decoded"]).encode()
            props = message["properties"]
            envelope = Envelope(body, props["content_type"], "utf-8", props["headers"], {})
            found.append((path.name, envelope, message["routing_key"]))
    return found


def captured_events() -> dict[str, list[dict[str, Any]]]:
    """Every captured event, by type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(FIXTURES.glob("*.json")):
        data = load(path.name)
        found: list[dict[str, Any]] = []
        if "event" in data:
            found.append(data["event"])
        decoded = data.get("body_decoded")
        if isinstance(decoded, dict):
            found.append(decoded)
        elif isinstance(decoded, list):
            found.extend(decoded)
        for entry in data.get("events", ()):
            found.append(entry["event"])
        for message in data.get("messages", ()):
            found.extend(message["body_decoded"])
        for event in found:
            by_type.setdefault(event["type"], []).append(event)
    return by_type


CAPTURED = captured_events()


def built(type: str) -> dict[str, Any]:
    """An event of ``type`` as celeriac builds it."""
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields = {
        "task-sent": events.task_sent(
            "id-1",
            "t.add",
            "(1, 2)",
            "{}",
            root_id="id-1",
            parent_id=None,
            retries=0,
            eta=None,
            expires=None,
            queue="celery",
            exchange="",
            routing_key="celery",
        ),
        "task-received": events.task_received(
            "id-1",
            "t.add",
            "(1, 2)",
            "{}",
            root_id="id-1",
            parent_id=None,
            retries=0,
            eta=when,
            expires=None,
        ),
        "task-started": {"uuid": "id-1"},
        "task-succeeded": events.task_succeeded("id-1", 3, 0.01),
        "task-failed": events.task_failed("id-1", "ValueError('x')", "Traceback..."),
        "task-retried": events.task_failed("id-1", "ValueError('x')", "Traceback..."),
        "task-revoked": events.task_revoked("id-1", expired=True),
        "task-rejected": events.task_rejected("id-1", requeue=False),
    }.get(type)
    if fields is None:
        fields = events.worker_status(
            freq=2.0,
            active=0,
            processed=3,
            loadavg=(0.123, 1.0, 2.0),
            sw_ident="py-celeriac",
            sw_ver="0.1",
            sw_sys="Linux",
        )
    return events.event(type, fields, hostname="w@h", clock=7)


def shape(event: dict[str, Any]) -> list[tuple[str, str]]:
    """Field names, in order, with their JSON types (null counts as any type)."""
    return [(k, type(v).__name__) for k, v in json.loads(json.dumps(event)).items()]


@pytest.mark.parametrize("type", sorted(events.FIELDS))
def test_each_type_has_celerys_fields_in_celerys_order(type: str) -> None:
    ours = built(type)
    assert list(ours) == [*COMMON, *events.FIELDS[type], "timestamp", "type"]
    for theirs in CAPTURED.get(type, []):
        assert list(ours) == list(theirs)
        for (name, our_type), (_, their_type) in zip(shape(ours), shape(theirs), strict=True):
            if "NoneType" not in (our_type, their_type):
                assert our_type == their_type, name


def test_every_type_celeriac_sends_was_captured() -> None:
    missing = set(events.FIELDS) - set(CAPTURED)
    assert missing == set()


def test_values_are_written_as_celery_writes_them() -> None:
    received = built("task-received")
    assert received["eta"] == "2030-01-02T03:04:05+00:00"
    assert received["args"] == "(1, 2)" and received["kwargs"] == "{}"
    assert built("task-succeeded")["result"] == "3"
    assert built("worker-heartbeat")["loadavg"] == [0.12, 1.0, 2.0]
    assert isinstance(built("worker-online")["utcoffset"], float)
    assert built("task-revoked") | {"timestamp": 0, "pid": 0} == {
        "hostname": "w@h",
        "utcoffset": received["utcoffset"],
        "pid": 0,
        "clock": 7,
        "uuid": "id-1",
        "terminated": False,
        "signum": None,
        "expired": True,
        "timestamp": 0,
        "type": "task-revoked",
    }


def test_a_long_result_is_cut_as_celerys_saferepr_cuts_it() -> None:
    result = events.task_succeeded("id", "x" * 5000, 1)["result"]
    assert len(result) == events.RESULT_REPR_MAXSIZE and result.endswith("...")

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert events.task_succeeded("id", Broken(), 1)["result"] == "<unrepresentable Broken>"


def test_routing_keys_are_the_types_with_dots() -> None:
    assert events.routing_key("worker-heartbeat") == "worker.heartbeat"
    assert events.routing_key("task-succeeded") == "task.succeeded"
    assert events.routing_key("worker-elect-ack") == "worker.elect.ack"


def test_the_envelope_is_celerys() -> None:
    captured = load("event-amqp-worker-online.json")["properties"]
    envelope = events.build_envelope(built("worker-online"), "w@h")
    assert envelope.headers == {"hostname": "w@h"}
    assert envelope.properties == {"delivery_mode": 1, "priority": 0}
    assert (envelope.content_type, envelope.content_encoding) == (
        captured["content_type"],
        captured["content_encoding"],
    )
    assert json.loads(envelope.body) == built("worker-online") | {
        "timestamp": json.loads(envelope.body)["timestamp"]
    }


def test_a_batch_is_a_json_list_and_parses_back() -> None:
    batch = [built("task-received"), built("task-started")]
    envelope = events.build_envelope(batch, "w@h")
    assert isinstance(json.loads(envelope.body), list)
    assert events.parse(envelope) == batch


@pytest.mark.parametrize(
    ("fixture", "envelope", "routing_key"),
    captured_envelopes(),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_captured_message_parses(fixture: str, envelope: Envelope, routing_key: str) -> None:
    parsed = events.parse(envelope)
    assert parsed, fixture
    for event in parsed:
        assert event["hostname"] == envelope.headers["hostname"]
        if routing_key == events.BATCH_ROUTING_KEY:
            assert event["type"].startswith("task-")
        else:
            assert events.routing_key(event["type"]) == routing_key


def test_captured_messages_cover_single_events_and_batches_on_both_brokers() -> None:
    keys = {(name.split("-")[1], key) for name, _, key in captured_envelopes()}
    assert {("redis", "task.multi"), ("amqp", "task.multi")} <= keys
    assert {("redis", "worker.heartbeat"), ("amqp", "worker.heartbeat")} <= keys


@pytest.mark.parametrize(
    "body", [b"not json", b"42", b'{"no": "type"}', b'"text"'], ids=["bad", "int", "untyped", "str"]
)
def test_what_is_not_an_event_raises_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        events.parse(Envelope(body, "application/json", "utf-8"))


def test_a_batch_skips_entries_that_are_not_events() -> None:
    body = json.dumps([{"type": "task-started", "uuid": "a"}, 3, {"x": 1}]).encode()
    assert events.parse(Envelope(body, "application/json", "utf-8")) == [
        {"type": "task-started", "uuid": "a"}
    ]


def test_utcoffset_is_hours_west_of_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events.time, "daylight", 0)
    monkeypatch.setattr(events.time, "timezone", -3600)
    assert events.utcoffset() == -1.0
