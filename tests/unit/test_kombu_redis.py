"""kombu's Redis layout (``celeriac.transports.redis.kombu``): pure functions, checked against
what real Celery 5.7 / kombu 5.7 wrote to Redis (``tests/fixtures/celery``, captured by
``scripts/capture_celery_fixtures.py``).
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.protocol.envelope import Envelope
from celeriac.transports.redis import kombu as kombu_redis
from celeriac.transports.redis.kombu import (
    EnvelopeError,
    binding_member,
    celery_priority,
    consume_keys,
    decode,
    delivery_tag,
    encode,
    list_key,
    priority_of,
    redelivered,
    unacked_entry,
)
from services import FIXTURES_DIR

RESTORED = "redis-transport-restored-message.json"
#: Every message Celery LPUSHed as a fresh publish (the restored one was RPUSHed back).
PUBLISHED = sorted(
    path.name
    for pattern in ("redis-task-*.json", "redis-canvas-*.json")
    for path in FIXTURES_DIR.glob(pattern)
)
SEP = "\x06\x16"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES_DIR / name).read_text())
    return data


def value_raw(name: str) -> str:
    data = fixture(name)
    # The restored message was captured as a parsed "envelope" only; kombu writes elements
    # with json.dumps' default separators, so dumping it again gives back its bytes.
    return str(data["value_raw"]) if "value_raw" in data else json.dumps(data["envelope"])


def tag_of(raw: str) -> str:
    return str(json.loads(raw)["properties"]["delivery_tag"])


def plain_envelope(**headers: Any) -> Envelope:
    return Envelope(
        body=b'[[1], {}, {"callbacks": null}]',
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "t", "id": "i", **headers},
        properties={"correlation_id": "i", "reply_to": "", "delivery_mode": 2},
    )


def test_there_are_fixtures() -> None:
    assert len(PUBLISHED) >= 19, f"fixtures not found in {FIXTURES_DIR}"


# -- priorities and keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "key"),
    [
        # celeriac 9..7 is Celery 0..2: the bare list, popped first.
        (9, "q"),
        (8, "q"),
        (7, "q"),
        (6, f"q{SEP}3"),
        (5, f"q{SEP}3"),
        (4, f"q{SEP}3"),
        (3, f"q{SEP}6"),
        (2, f"q{SEP}6"),
        (1, f"q{SEP}6"),
        (0, f"q{SEP}9"),
    ],
)
def test_list_key_per_priority(priority: int, key: str) -> None:
    assert list_key("q", priority) == key


def test_celery_priority_is_reversed() -> None:
    assert [celery_priority(p) for p in range(10)] == list(range(9, -1, -1))


def test_list_key_of_the_captured_priority_message() -> None:
    # apply_async(priority=7) went to "celery\x06\x166"; celeriac's 2 must go there too.
    data = fixture("redis-task-apply_async-priority.json")
    assert data["envelope"]["properties"]["priority"] == 7
    assert list_key("celery", 9 - 7) == data["redis_key"] == f"celery{SEP}6"


def test_consume_keys_are_kombus_brpop_order() -> None:
    commands = fixture("redis-transport-brpop-commands.json")["commands"]
    for command in commands:
        keys = command[1:-1]  # without "BRPOP" and the timeout
        queues = keys[: len(keys) // 4]  # the bare lists come first, one per queue
        assert consume_keys(queues) == keys


def test_binding_member() -> None:
    assert binding_member("celery") == f"celery{SEP}{SEP}celery"


# -- encode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLISHED)
def test_re_encoding_a_decoded_fixture_gives_celerys_bytes(name: str) -> None:
    raw = value_raw(name)
    tag = tag_of(raw)
    message = decode(raw, tag)
    queue = json.loads(raw)["properties"]["delivery_info"]["routing_key"]
    assert encode(message.envelope, queue, message.priority, tag) == raw


def test_re_encoding_the_restored_message_drops_only_the_redelivered_flag() -> None:
    # encode() writes a fresh publish, and kombu's delivery_info of a fresh publish has no
    # "redelivered". The header of that name is message data (kombu put it among the
    # headers) and stays. Restoring is redelivered()'s job, which gives back the bytes.
    raw = value_raw(RESTORED)
    message = decode(raw, tag_of(raw))
    again = json.loads(encode(message.envelope, "celery", message.priority, tag_of(raw)))
    original = json.loads(raw)
    del original["properties"]["delivery_info"]["redelivered"]
    assert again == original
    assert again["headers"]["redelivered"] is True


def test_encode_layout() -> None:
    envelope = plain_envelope(x_custom=[1, "two"])
    envelope.properties["priority"] = 5  # the transport's, replaced by the argument
    envelope.properties["delivery_tag"] = "stale"
    raw = encode(envelope, "proto_other", 2, "tag-1")
    assert raw == (
        '{"body": "' + base64.b64encode(envelope.body).decode() + '", '
        '"content-encoding": "utf-8", "content-type": "application/json", '
        '"headers": {"task": "t", "id": "i", "x_custom": [1, "two"]}, '
        '"properties": {"correlation_id": "i", "reply_to": "", "delivery_mode": 2, '
        '"delivery_info": {"exchange": "", "routing_key": "proto_other"}, "priority": 7, '
        '"body_encoding": "base64", "delivery_tag": "tag-1"}}'
    )
    assert envelope.properties["priority"] == 5  # the caller's envelope is not changed


def test_encode_makes_up_a_uuid_tag() -> None:
    tags = {json.loads(encode(plain_envelope(), "q", 0))["properties"]["delivery_tag"]}
    tags.add(json.loads(encode(plain_envelope(), "q", 0))["properties"]["delivery_tag"])
    assert len(tags) == 2
    for tag in tags:
        assert str(uuid.UUID(tag)) == tag


def test_encode_refuses_headers_that_are_not_json() -> None:
    with pytest.raises(TypeError, match="headers or properties are not JSON"):
        encode(plain_envelope(x_obj=object()), "q", 0)


def test_encode_decode_round_trip() -> None:
    envelope = plain_envelope(x_tenant="acme")
    envelope.properties["expiration"] = "120000"
    for priority in range(10):
        message = decode(encode(envelope, "q", priority, "t1"), "t1")
        assert message.priority == priority
        assert message.tag == "t1"
        assert message.redelivered is False
        assert message.envelope == Envelope(
            envelope.body,
            envelope.content_type,
            envelope.content_encoding,
            envelope.headers,
            {**envelope.properties, "priority": priority},
        )


# -- decode ------------------------------------------------------------------------------------


def test_decode_reads_bytes_as_redis_returns_them() -> None:
    raw = value_raw("redis-task-delay.json")
    message = decode(raw.encode(), "the-transports-tag")
    assert message.tag == "the-transports-tag"  # not the envelope's delivery_tag
    assert message.envelope.headers["task"] == "protoapp.add"
    assert message.envelope.body == (
        b'[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    )


def test_decode_of_the_restored_message_is_redelivered() -> None:
    raw = value_raw(RESTORED)
    message = decode(raw, tag_of(raw))
    assert message.redelivered is True
    assert message.envelope.headers["redelivered"] is True  # kept as a custom header
    assert "delivery_info" not in message.envelope.properties


@pytest.mark.parametrize(
    ("celery", "celeriac"),
    [
        *[(0, 9), (2, 7), (7, 2), (9, 0), (12, 0), (-3, 9), (None, 9)],
        *[("7", 2), (7.0, 2), (True, 8), ("high", 9)],  # kombu's int()
    ],
)
def test_decode_priority(celery: Any, celeriac: int) -> None:
    raw = json.loads(encode(plain_envelope(), "q", 0, "t"))
    if celery is None:
        del raw["properties"]["priority"]  # absent: Celery's default 0
    else:
        raw["properties"]["priority"] = celery
    message = decode(json.dumps(raw), "t")
    assert message.priority == celeriac == priority_of(raw)
    assert message.envelope.properties["priority"] == celeriac


def test_decode_base64_with_line_breaks_as_kombu_does() -> None:
    raw = json.loads(encode(plain_envelope(), "q", 0, "t"))
    raw["body"] = base64.encodebytes(b"x" * 100).decode()  # a line break every 76 chars
    assert decode(json.dumps(raw), "t").envelope.body == b"x" * 100


def test_datetime_headers_travel_as_kombu_markers() -> None:
    from datetime import UTC, datetime

    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    envelope = plain_envelope()
    envelope.headers["x_when"] = when
    payload = encode(envelope, "q", 0, "t")
    assert '{"__type__": "datetime", "__value__": "2030-01-02T03:04:05+00:00"}' in payload
    assert decode(payload, "t").envelope.headers["x_when"] == when


def test_decode_a_body_that_is_not_base64() -> None:
    raw = json.loads(encode(plain_envelope(), "q", 0, "t"))
    raw["body"] = "[[1], {}, null]"
    del raw["properties"]["body_encoding"]
    assert decode(json.dumps(raw), "t").envelope.body == b"[[1], {}, null]"


def test_decode_null_headers_are_empty() -> None:
    raw = json.loads(encode(plain_envelope(), "q", 0, "t"))
    raw["headers"] = None
    assert decode(json.dumps(raw), "t").envelope.headers == {}


def test_decode_missing_content_type_is_empty() -> None:
    raw = json.loads(encode(plain_envelope(), "q", 0, "t"))
    del raw["content-type"]
    raw["content-encoding"] = 5
    envelope = decode(json.dumps(raw), "t").envelope
    assert (envelope.content_type, envelope.content_encoding) == ("", "")


def _broken(change: Any) -> str:
    raw = json.loads(encode(plain_envelope(), "q", 0, "t"))
    change(raw)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "not a JSON envelope"),
        ("[" * 100_000, "not a JSON envelope"),
        ("[1, 2]", "envelope is a JSON list, not an object"),
        (_broken(lambda raw: raw.pop("properties")), "no 'properties' object"),
        (_broken(lambda raw: raw.update(properties=[])), "no 'properties' object"),
        (_broken(lambda raw: raw.update(headers=[])), "'headers' is not an object"),
        (_broken(lambda raw: raw.pop("body")), "no 'body' string"),
        (_broken(lambda raw: raw.update(body=b"x".hex() + "!")), "not valid base64"),
    ],
)
def test_decode_errors(payload: str, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        decode(payload, "t")


def test_envelope_error_is_a_value_error() -> None:
    assert issubclass(EnvelopeError, ValueError)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # A delivery tag that is not UTF-8 (claim.lua's cjson takes it; Python must not crash).
        (b'{"body":"","headers":{},"properties":{"delivery_tag":"\xff"}}', "not UTF-8 \\(byte 54"),
        # A kombu marker in the headers that does not decode (the serializer's ProtocolError).
        (
            b'{"body":"","content-type":"application/json","headers":{"x":{"__type__":'
            b'"datetime","__value__":"yesterday"}},"properties":{}}',
            "a type marker in its headers or properties does not decode: malformed 'datetime'",
        ),
        (b'{"body":"","headers":{},"properties":{"x":{"__type__":"uuid","__value__":7}}}', "uuid"),
    ],
)
def test_decode_turns_the_reported_poison_into_envelope_errors(
    payload: bytes, message: str
) -> None:
    with pytest.raises(EnvelopeError, match=message):
        decode(payload, "t")


_markers = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(
            ["datetime", "date", "time", "decimal", "uuid", "bytes", "base64"]
        ),
        "__value__": st.none() | st.integers() | st.text(max_size=8) | st.just({"hex": "zz"}),
    }
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | _markers,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "body": _json,
        "content-type": _json,
        "content-encoding": _json,
        "headers": _json,
        "properties": st.dictionaries(
            st.sampled_from(["delivery_tag", "priority", "body_encoding", "delivery_info", "x"]),
            _json,
            max_size=4,
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(_envelopes)
def test_decode_raises_only_envelope_error_on_any_json_envelope(raw: dict[str, Any]) -> None:
    payload = json.dumps(raw)
    try:
        message = decode(payload, "t")
    except EnvelopeError as exc:
        assert str(exc), "an EnvelopeError without its reason"
    else:
        assert isinstance(message.envelope.body, bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_decode_raises_only_envelope_error_on_any_bytes(noise: bytes, at: int) -> None:
    valid = encode(plain_envelope(), "q", 0, "t").encode()
    for payload in (noise, valid[:at] + noise + valid[at:]):
        try:
            message = decode(payload, "t")
        except EnvelopeError as exc:
            assert str(exc), "an EnvelopeError without its reason"
        else:
            assert isinstance(message.envelope.body, bytes)


@pytest.mark.parametrize(
    ("properties", "tag"),
    [
        ({"delivery_tag": "abc"}, "abc"),
        ({"delivery_tag": "\udcff"}, "\udcff"),  # surrogateescape's: goes back as b"\xff"
        ({"delivery_tag": "\ud800"}, None),  # no bytes stand for it: cannot be sent back
        ({"delivery_tag": ""}, None),
        ({"delivery_tag": 7}, None),
        ({}, None),
    ],
)
def test_delivery_tag_is_one_redis_can_be_sent_back(properties: dict[str, Any], tag: Any) -> None:
    assert delivery_tag({"properties": properties}) == tag


# -- restoring and holding ---------------------------------------------------------------------


def test_redelivered_gives_back_the_restored_fixture_byte_for_byte() -> None:
    restored = value_raw(RESTORED)
    # The message as it was first published: without kombu's two redelivered flags.
    original = json.loads(restored)
    del original["headers"]["redelivered"]
    del original["properties"]["delivery_info"]["redelivered"]
    message = decode(json.dumps(original), tag_of(restored))
    assert message.redelivered is False
    assert redelivered(message.raw, message.tag) == restored


def test_redelivered_keeps_the_tag_and_adds_one_if_missing() -> None:
    raw = json.loads(encode(plain_envelope(), "q", 0, "kept"))
    assert json.loads(redelivered(raw, "other"))["properties"]["delivery_tag"] == "kept"
    del raw["properties"]["delivery_tag"]
    assert json.loads(redelivered(raw, "given"))["properties"]["delivery_tag"] == "given"


def test_redelivered_tolerates_an_envelope_without_headers_or_delivery_info() -> None:
    raw: dict[str, Any] = {"body": "", "properties": {}}
    assert json.loads(redelivered(raw, "t")) == {
        "body": "",
        "properties": {"delivery_tag": "t"},
    }


def test_unacked_entry_is_kombus_byte_for_byte() -> None:
    data = fixture("redis-transport-unacked-hash-entry.json")
    envelope = data["unacked_value_decoded"][0]
    payload = json.dumps(envelope)  # the element as it was popped
    assert envelope["properties"]["delivery_tag"] == data["delivery_tag"]
    assert unacked_entry(payload.encode(), "celery") == data["unacked_value_raw"].encode()


def test_unacked_entry_escapes_the_queue_name() -> None:
    assert unacked_entry(b"{}", 'we"ird\x06') == b'[{}, "", "we\\"ird\\u0006"]'


def test_constants_are_kombus() -> None:
    assert kombu_redis.SEPARATOR == SEP
    assert kombu_redis.PRIORITY_STEPS == (0, 3, 6, 9)
    assert (kombu_redis.UNACKED, kombu_redis.UNACKED_INDEX, kombu_redis.UNACKED_MUTEX) == (
        "unacked",
        "unacked_index",
        "unacked_mutex",
    )
    assert kombu_redis.BINDING_PREFIX == "_kombu.binding."


def _batch(count: int, **options: Any) -> list[Envelope]:
    from celeriac.protocol import message as protocol

    calls = [(f"id-{i}", (i, "ünï"), {"k": i} if i % 2 else {}) for i in range(count)]
    return protocol.build_task_messages("tasks.add", calls, **options)


@pytest.mark.parametrize(
    "envelopes",
    [
        _batch(5),
        _batch(4, headers={"x_when": datetime(2030, 1, 1, tzinfo=UTC), "x_pct": "100%"}),
        [*_batch(2), *_batch(2, serializer="msgpack")],  # two content types: one by one
        [*_batch(2), Envelope(b"{}", "application/json", "utf-8", {"task": "t"})],  # other keys
        _batch(1),
    ],
    ids=["batch", "marker-and-percent-headers", "mixed-content-types", "other-keys", "one"],
)
def test_encode_many_is_encode_one_by_one(envelopes: list[Envelope]) -> None:
    tags = [f"tag-{i}" for i in range(len(envelopes))]
    expected = [encode(e, "q", 7, tag) for e, tag in zip(envelopes, tags, strict=True)]
    assert kombu_redis.encode_many(envelopes, "q", 7, tags) == expected


def test_encode_many_sees_a_property_changed_after_building() -> None:
    """rpc:// names its reply queue in each message after it is built: a changed value is
    the message's own, even when it equals another message's."""
    envelopes = _batch(3)
    envelopes[1].properties["reply_to"] = "reply-queue"
    envelopes[2].properties["reply_to"] = "".join(["reply-", "queue"])  # equal, not the same
    tags = ["a", "b", "c"]
    expected = [encode(e, "q", 0, tag) for e, tag in zip(envelopes, tags, strict=True)]
    assert kombu_redis.encode_many(envelopes, "q", 0, tags) == expected
    assert json.loads(expected[1])["properties"]["reply_to"] == "reply-queue"
