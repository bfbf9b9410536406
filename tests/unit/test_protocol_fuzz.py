"""Property tests: whatever arrives, parse_task_message returns or raises ProtocolError.

A worker must be able to reject any message with one clear error, never crash on it with
a KeyError, TypeError or a decoder's own exception.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from celeriac.errors import ProtocolError
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.message import (
    STANDARD_HEADERS,
    TaskMessage,
    build_task_message,
    parse_task_message,
)
from celeriac.protocol.serialization import JSON, MSGPACK, PICKLE, dumps

FUZZ = settings(max_examples=300, deadline=None)
# Pickle is left out on purpose: unpickling random bytes is exactly the risk accept guards.
ACCEPT = frozenset({JSON, MSGPACK})

# msgpack cannot carry integers outside [-2**63, 2**64); JSON can.
int64 = st.integers(-(2**63), 2**64 - 1)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
msgpack_scalars = (
    st.none()
    | st.booleans()
    | int64
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# msgpack can also carry bytes and non-string map keys.
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | int64, children, max_size=4)
    ),
    max_leaves=20,
)
header_keys = st.sampled_from(STANDARD_HEADERS) | st.text(max_size=10)
content_types = st.sampled_from([JSON, MSGPACK, PICKLE, "text/plain", ""]) | st.text(max_size=10)
content_encodings = st.sampled_from(["utf-8", "binary", "latin-1", "utf-16", "nope", ""])

VALID_HEADERS = {"task": "t", "id": "i"}
VALID_BODY = b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def _parse_or_reject(envelope: Envelope) -> TaskMessage | None:
    try:
        message = parse_task_message(envelope, ACCEPT)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what is wrong"
        event(f"rejected: {type(exc).__name__}")
        return None
    event("parsed")
    assert isinstance(message, TaskMessage)
    assert isinstance(message.task, str) and message.task
    assert isinstance(message.id, str) and message.id
    assert isinstance(message.args, list)
    assert isinstance(message.kwargs, dict)
    assert all(isinstance(k, str) for k in message.kwargs)
    assert isinstance(message.embed, dict)
    assert isinstance(message.retries, int) and message.retries >= 0
    assert isinstance(message.ignore_result, bool)
    return message


def body_shapes(values: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> Any:
    """Anything, three of anything, or nearly [args, kwargs, embed]."""
    signature_lists = st.none() | st.lists(values | st.dictionaries(st.text(max_size=5), values))
    embeds = (
        st.none()
        | values
        | st.fixed_dictionaries(
            {},
            optional={
                "callbacks": signature_lists,
                "errbacks": signature_lists,
                "chain": signature_lists,
                "chord": st.none() | values,
            },
        )
    )
    return st.one_of(
        values,
        st.tuples(values, values, values).map(list),
        st.tuples(
            st.lists(values, max_size=3), st.dictionaries(keys, values, max_size=3), embeds
        ).map(list),
    )


@FUZZ
@given(
    body=st.binary(max_size=200),
    content_type=st.sampled_from([JSON, MSGPACK]) | content_types,
    encoding=content_encodings,
)
def test_random_bytes(body: bytes, content_type: str, encoding: str) -> None:
    _parse_or_reject(Envelope(body, content_type, encoding, dict(VALID_HEADERS), {}))


@FUZZ
@given(data=st.data(), serializer=st.sampled_from(["json", "msgpack"]))
def test_damaged_bodies(data: st.DataObject, serializer: str) -> None:
    """A valid body with bytes overwritten, cut short or inserted."""
    envelope = build_task_message(
        "t", "i", [1, "a", None], {"k": [1.5, {"x": True}]}, serializer=serializer
    )
    body = bytearray(envelope.body)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(["replace", "cut", "insert"]))
        if action == "cut":
            del body[at:]
        elif action == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif at < len(body):
            body[at] = data.draw(st.integers(0, 255))
    envelope.body = bytes(body)
    _parse_or_reject(envelope)


@FUZZ
@given(
    headers=st.dictionaries(header_keys, json_values, max_size=12),
    with_task=st.booleans(),
    properties=st.dictionaries(st.sampled_from(["priority", "reply_to", "x"]), json_values),
)
def test_random_headers(
    headers: dict[str, Any], with_task: bool, properties: dict[str, Any]
) -> None:
    if with_task:  # otherwise nearly every example stops at the missing 'task'
        headers = {**VALID_HEADERS, **headers}
    envelope = Envelope(VALID_BODY, JSON, "utf-8", headers, properties)
    message = _parse_or_reject(envelope)
    if message is not None:
        assert message.headers == headers


@FUZZ
@given(body=body_shapes(json_values, st.text(max_size=5)))
def test_random_json_bodies(body: Any) -> None:
    data = json.dumps(body).encode()
    message = _parse_or_reject(Envelope(data, JSON, "utf-8", dict(VALID_HEADERS), {}))
    if message is not None:
        assert isinstance(body, list) and len(body) == 3


@FUZZ
@given(body=body_shapes(msgpack_values, st.text(max_size=5) | int64))
def test_random_msgpack_bodies(body: Any) -> None:
    data, _, _ = dumps(body, "msgpack")
    message = _parse_or_reject(Envelope(data, MSGPACK, "binary", dict(VALID_HEADERS), {}))
    if message is not None:
        assert isinstance(body, list) and len(body) == 3


finite = st.floats(allow_nan=False, allow_infinity=False)
plain_values = st.recursive(
    st.none() | st.booleans() | int64 | finite | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    args=st.lists(plain_values, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=10), plain_values, max_size=4),
    serializer=st.sampled_from(["json", "msgpack"]),
    retries=st.integers(0, 100),
    limits=st.tuples(st.none() | finite.map(abs), st.none() | st.integers(0, 10**6)),
)
def test_build_then_parse(
    args: list[Any],
    kwargs: dict[str, Any],
    serializer: str,
    retries: int,
    limits: tuple[float | None, int | None],
) -> None:
    envelope = build_task_message(
        "t",
        "i",
        args,
        kwargs,
        serializer=serializer,
        retries=retries,
        time_limit=limits[0],
        soft_time_limit=limits[1],
    )
    message = parse_task_message(envelope, ACCEPT)
    assert message.args == args
    assert message.kwargs == kwargs
    assert message.retries == retries
    assert (message.time_limit, message.soft_time_limit) == limits
    assert message.headers == envelope.headers
    assert all(not isinstance(v, float) or math.isfinite(v) for v in limits if v is not None)
