"""celeriac writes AMQP properties byte for byte as pamqp does, only faster."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from typing import Any

from aiormq import spec
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.transports.amqp.properties import Properties
from services import FIXTURES_DIR

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=30)
    | st.datetimes(timezones=st.just(UTC))
)  # floats differ from pamqp on purpose: see test_floats_are_64_bit_doubles_as_celery_writes_them
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
short = st.text(max_size=40)
properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": short,
        "content_encoding": short,
        "headers": st.dictionaries(st.text(max_size=20), values, max_size=25),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(min_value=0, max_value=255),
        "correlation_id": short,
        "reply_to": short,
        "expiration": st.integers(min_value=0, max_value=10**9).map(str),
        "message_id": short,
        "timestamp": st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        "message_type": short,
        "user_id": short,
        "app_id": short,
    },
)


def marshalled(cls: type[spec.Basic.Properties], fields: dict[str, Any]) -> bytes | str:
    """The bytes, or the type of the error (values pamqp cannot encode must fail alike)."""
    try:
        return bytes(cls(**fields).marshal())
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        return type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(properties)
def test_the_same_bytes_as_pamqp(fields: dict[str, Any]) -> None:
    assert marshalled(Properties, fields) == marshalled(spec.Basic.Properties, fields)


def test_the_same_bytes_as_pamqp_for_every_captured_celery_message() -> None:
    """The headers and properties real Celery sent, from the captured AMQP fixtures."""
    checked = 0
    for path in sorted(FIXTURES_DIR.glob("amqp-*.json")):
        fields = json.loads(path.read_text())["properties"]
        fields["message_type"] = fields.pop("type", None)
        assert marshalled(Properties, fields) == marshalled(spec.Basic.Properties, fields)
        checked += 1
    assert checked >= 10, f"expected captured AMQP messages in {FIXTURES_DIR}"


escaped = st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=200, deadline=None)
@given(
    content_type=escaped,
    correlation_id=escaped,
    names=st.lists(escaped.filter(bool), max_size=4, unique=True),
)
def test_text_that_is_not_utf8_is_read_and_written_byte_for_byte(
    content_type: str, correlation_id: str, names: list[str]
) -> None:
    """Short strings and header names that are not UTF-8 read as escaped text (pamqp's
    strict decoding raised, which ended the connection) and are written back as the bytes
    they came as."""
    import celeriac.transports.amqp.connection  # noqa: F401  # installs the lenient decoding

    headers = {name: "v" for name in names}
    written = Properties(
        content_type=content_type, correlation_id=correlation_id, headers=headers
    ).marshal()
    read = spec.Basic.Properties()
    read.unmarshal(struct.unpack_from(">H", written)[0], written[2:])
    assert read.content_type == (content_type or None)
    assert read.correlation_id == (correlation_id or None)
    assert (read.headers or {}) == headers
    assert Properties(**{k: getattr(read, k) for k in read.__slots__}).marshal() == written


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False), min_size=1, max_size=4))
def test_floats_are_64_bit_doubles_as_celery_writes_them(numbers: list[float]) -> None:
    """pamqp writes 32-bit floats: 0.1 would come back 0.10000000149011612. celeriac writes
    py-amqp's doubles ("d"), which every reader (pamqp, py-amqp, RabbitMQ) reads back exact."""
    from pamqp import decode

    headers = {"expires": numbers[0], "timelimit": numbers}
    data = bytes(Properties(headers=headers).marshal())
    assert b"expiresd" in data
    _, read = decode.field_table(data[2:])  # after the two bytes of property flags
    assert read == headers
