"""Serializers: round trips, the accept list, and the errors they raise.

kombu (a test-only dependency) is the reference for JSON: celeriac must write kombu's
``{"__type__": ..., "__value__": ...}`` markers byte for byte and read the ones it writes.
"""

from __future__ import annotations

import decimal
import json
import pickle
import sys
import uuid
import warnings
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import kombu.serialization
import pytest
from kombu.utils import json as kombu_json

from celeriac.errors import ConfigurationError, ContentDisallowed, ProtocolError
from celeriac.protocol import message as protocol
from celeriac.protocol import serialization
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.serialization import (
    JSON,
    MSGPACK,
    PICKLE,
    content_type_for,
    dumps,
    loads,
    resolve_accept,
)

ALL = frozenset({JSON, MSGPACK, PICKLE})
PLAIN: Any = [[1, 2.5, "é", None, True], {"a": {"b": [1, {"c": "d"}]}}, {"x": None}]


@pytest.fixture
def fresh_pickle_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next pickle resolution warn, whatever earlier tests did."""
    monkeypatch.setattr(serialization, "_pickle_warned", False)


class TestContentTypeFor:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("json", JSON),
            ("msgpack", MSGPACK),
            ("pickle", PICKLE),
            ("application/json", JSON),
            ("application/x-msgpack", MSGPACK),
            ("application/x-python-serialize", PICKLE),
            (" JSON ", JSON),
        ],
    )
    def test_names_and_content_types(self, given: str, expected: str) -> None:
        assert content_type_for(given) == expected

    def test_unknown_names_the_accepted_ones(self) -> None:
        with pytest.raises(ConfigurationError, match="unknown serializer 'yaml'") as info:
            content_type_for("yaml")
        for name in ("json", "msgpack", "pickle"):
            assert name in str(info.value)


class TestJson:
    def test_round_trip(self) -> None:
        data, content_type, encoding = dumps(PLAIN)
        assert (content_type, encoding) == (JSON, "utf-8")
        assert loads(data, content_type, encoding, {JSON}) == PLAIN

    def test_bytes_are_kombus(self) -> None:
        # Default separators and ensure_ascii: what Celery puts on the wire.
        data, _, _ = dumps([[2, 3], {"k": "é"}, {"callbacks": None}])
        assert data == b'[[2, 3], {"k": "\\u00e9"}, {"callbacks": null}]'

    def test_extra_types_are_kombus_markers(self) -> None:
        value = {
            "dt": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            "naive": datetime(2030, 1, 2, 3, 4, 5),
            "d": date(2030, 1, 2),
            "t": time(3, 4, 5),
            "u": uuid.UUID("00000000-1111-2222-3333-444444444444"),
            "dec": decimal.Decimal("1.10"),
            "b": b"hi",
            "raw": b"\xff\x00",
        }
        data, _, _ = dumps(value, "json")
        assert json.loads(data) == {
            "dt": {"__type__": "datetime", "__value__": "2030-01-02T03:04:05.000006+00:00"},
            "naive": {"__type__": "datetime", "__value__": "2030-01-02T03:04:05"},
            "d": {"__type__": "date", "__value__": "2030-01-02"},
            "t": {"__type__": "time", "__value__": "03:04:05"},
            "u": {"__type__": "uuid", "__value__": {"hex": "00000000111122223333444444444444"}},
            "dec": {"__type__": "decimal", "__value__": "1.10"},
            "b": {"__type__": "bytes", "__value__": "hi"},
            "raw": {"__type__": "base64", "__value__": "/wA="},
        }

    def test_unserializable_is_a_type_error_naming_the_type(self) -> None:
        class Widget:
            pass

        with pytest.raises(TypeError, match=r"Widget cannot be serialized: pass plain data"):
            dumps({"w": Widget()})
        with pytest.raises(TypeError, match="set"):
            dumps([{1, 2}])
        with pytest.raises(TypeError, match="bytearray"):  # kombu refuses it too
            dumps([bytearray(b"x")])

    def test_invalid_json_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError, match="not valid JSON"):
            loads(b"[1, 2", JSON, "utf-8", {JSON})

    def test_invalid_utf8_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError, match="not valid utf-8"):
            loads(b'["\xff"]', JSON, "utf-8", {JSON})

    def test_unknown_encoding_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError, match="unknown content encoding 'rot-13-ish'"):
            loads(b"[]", JSON, "rot-13-ish", {JSON})

    def test_other_text_encoding(self) -> None:
        assert loads('["é"]'.encode("latin-1"), JSON, "latin-1", {JSON}) == ["é"]

    def test_binary_encoding_is_read_as_utf8(self) -> None:
        assert loads('["é"]'.encode(), JSON, "binary", {JSON}) == ["é"]

    def test_deep_nesting_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError, match="nested too deeply"):
            loads(b"[" * 100_000 + b"]" * 100_000, JSON, "utf-8", {JSON})


def _json_loads(data: bytes) -> Any:
    return loads(data, JSON, "utf-8", {JSON})


_PLUS_TWO = timezone(timedelta(hours=2))
#: Values kombu's JSON encoder wraps in markers, each alone and nested in a task body.
MARKED: dict[str, Any] = {
    "datetime-utc": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
    "datetime-micro-offset": datetime(2030, 1, 2, 3, 4, 5, 62520, tzinfo=_PLUS_TWO),
    "datetime-naive": datetime(2030, 1, 2, 3, 4, 5),
    "date": date(2030, 1, 2),
    "time": time(3, 4, 5),
    "time-micro-offset": time(3, 4, 5, 6, tzinfo=_PLUS_TWO),
    "decimal": decimal.Decimal("1.10"),
    "decimal-exponent": decimal.Decimal("-1E+3"),
    "decimal-nan": decimal.Decimal("NaN"),
    "uuid": uuid.UUID("00000000-1111-2222-3333-444444444444"),
    "bytes-utf8": "é ascii".encode(),
    "bytes-empty": b"",
    "bytes-binary": bytes(range(256)),
}


def _task_body(value: Any) -> Any:
    return [
        [value, 1],
        {"when": value, "many": [value, {"deep": value}]},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (NaN equals NaN, aware != naive)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, datetime | time):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, decimal.Decimal) and a.is_nan():
        return b.is_nan()
    return bool(a == b)


class TestKombuMarkers:
    @pytest.mark.parametrize("value", MARKED.values(), ids=MARKED.keys())
    def test_bytes_equal_kombus(self, value: Any) -> None:
        for obj in (value, _task_body(value)):
            assert dumps(obj)[0] == kombu_json.dumps(obj).encode()

    @pytest.mark.parametrize("value", MARKED.values(), ids=MARKED.keys())
    def test_round_trip(self, value: Any) -> None:
        body = _task_body(value)
        assert _same(_json_loads(dumps(body)[0]), body)

    @pytest.mark.parametrize("value", MARKED.values(), ids=MARKED.keys())
    def test_reads_what_kombu_writes(self, value: Any) -> None:
        body = _task_body(value)
        assert _same(_json_loads(kombu_json.dumps(body).encode()), body)

    @pytest.mark.parametrize("value", MARKED.values(), ids=MARKED.keys())
    def test_kombu_reads_what_celeriac_writes(self, value: Any) -> None:
        # What a Celery worker's kombu does with a body celeriac sent.
        body = _task_body(value)
        assert _same(kombu_json.loads(dumps(body)[0]), body)

    def test_datetime_subclass_is_written_as_kombu_does(self) -> None:
        class Stamp(datetime):
            def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
                return "not used by kombu"

        value = Stamp(2030, 1, 2, tzinfo=UTC)
        assert dumps(value)[0] == kombu_json.dumps(value).encode()
        assert _json_loads(dumps(value)[0]) == datetime(2030, 1, 2, tzinfo=UTC)

    def test_kombus_date_reader_accepts_a_datetime_text(self) -> None:
        text = b'{"__type__": "date", "__value__": "2030-01-02T03:04:05"}'
        assert _json_loads(text) == kombu_json.loads(text) == date(2030, 1, 2)

    def test_uuid_as_a_plain_string_is_accepted(self) -> None:
        text = b'{"__type__": "uuid", "__value__": "00000000-0000-0000-0000-000000000001"}'
        assert _json_loads(text) == uuid.UUID(int=1)

    @pytest.mark.parametrize(
        "text",
        [
            '{"__type__": "frobnicate", "__value__": 1}',  # unknown type (kombu refuses it)
            '{"__type__": "datetime", "__value__": "2030-01-02", "extra": 1}',  # a third key
            '{"__type__": "datetime"}',  # no value
            '{"__value__": "2030-01-02"}',  # no type
            '{"__type__": ["datetime"], "__value__": "2030-01-02"}',  # type not a string
            '{"__type__": null, "__value__": null}',
        ],
    )
    def test_dicts_that_are_not_markers_stay_dicts(self, text: str) -> None:
        assert _json_loads(f"[{text}]".encode()) == [json.loads(text)]

    def test_marker_text_inside_a_string_stays_a_string(self) -> None:
        value = ['{"__type__": "decimal", "__value__": "1"}', '"__type__"']
        assert _json_loads(dumps(value)[0]) == value

    def test_a_key_spelled_with_escapes_is_not_recognised(self) -> None:
        # The price of the fast path (documented): kombu would read this as a Decimal, but no
        # JSON encoder writes ASCII letters as \u escapes.
        text = rb'{"\u005f_type__": "decimal", "__value__": "1.5"}'
        assert kombu_json.loads(text) == decimal.Decimal("1.5")
        assert _json_loads(text) == {"__type__": "decimal", "__value__": "1.5"}

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('{"__type__": "datetime", "__value__": "yesterday"}', "malformed 'datetime'"),
            ('{"__type__": "datetime", "__value__": 12}', "malformed 'datetime' marker: 12"),
            ('{"__type__": "date", "__value__": "2030-13-01"}', "malformed 'date'"),
            ('{"__type__": "time", "__value__": "25:00"}', "malformed 'time'"),
            ('{"__type__": "decimal", "__value__": "one"}', "malformed 'decimal'"),
            ('{"__type__": "decimal", "__value__": {}}', "malformed 'decimal'"),
            ('{"__type__": "uuid", "__value__": {"hex": "xyz"}}', "malformed 'uuid'"),
            ('{"__type__": "uuid", "__value__": {"hex": 5}}', "malformed 'uuid'"),
            ('{"__type__": "uuid", "__value__": {"colour": "red"}}', "malformed 'uuid'"),
            ('{"__type__": "uuid", "__value__": [1]}', "malformed 'uuid'"),
            ('{"__type__": "bytes", "__value__": 1}', "malformed 'bytes'"),
            ('{"__type__": "base64", "__value__": "abc"}', "malformed 'base64'"),
        ],
    )
    def test_malformed_known_marker_is_a_protocol_error(self, text: str, message: str) -> None:
        # kombu refuses them too, with whatever its decoder raised.
        with pytest.raises((ValueError, TypeError, AttributeError, ArithmeticError)):
            kombu_json.loads(text)
        with pytest.raises(ProtocolError, match=message):
            _json_loads(f"[1, {text}]".encode())

    def test_a_task_message_from_celery_gives_the_task_a_datetime(self) -> None:
        when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        body = [[when], {"amount": decimal.Decimal("9.99")}, {"chain": None}]
        # What Celery's producer does with the body: kombu's registry, serializer "json".
        content_type, encoding, text = kombu.serialization.dumps(body, serializer="json")
        envelope = Envelope(text.encode(), content_type, encoding, {"task": "t", "id": "i"})
        message = protocol.parse_task_message(envelope, {JSON})
        assert _same(message.args, [when])
        assert _same(message.kwargs, {"amount": decimal.Decimal("9.99")})

    def test_a_task_message_from_celeriac_gives_celery_a_datetime(self) -> None:
        when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
        envelope = protocol.build_task_message("t", "i", [when], {"on": date(2030, 1, 2)})
        # What Celery's worker does with the body (Message.decode()).
        body = kombu.serialization.loads(
            envelope.body, envelope.content_type, envelope.content_encoding, accept={JSON}
        )
        assert _same(body[:2], [[when], {"on": date(2030, 1, 2)}])

    def test_plain_bodies_skip_the_object_hook(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The hot path: a body with no "__type__" key is parsed without a hook per object.
        class NoHook(json.JSONDecoder):
            def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
                raise AssertionError("the marker decoder was used for a plain body")

        monkeypatch.setattr(serialization, "_MARKER_DECODER", NoHook())
        for value in (PLAIN, _task_body("é ü ☃ type"), [{"__typ": 1, "__value__": 2}]):
            assert _json_loads(dumps(value)[0]) == value
        with pytest.raises(AssertionError, match="marker decoder was used"):
            _json_loads(dumps([date(2030, 1, 2)])[0])


class TestMsgpack:
    def test_round_trip(self) -> None:
        data, content_type, encoding = dumps(PLAIN, "msgpack")
        assert (content_type, encoding) == (MSGPACK, "binary")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == PLAIN

    def test_bytes_survive(self) -> None:
        data, _, _ = dumps({"raw": b"\x00\xff"}, "msgpack")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == {"raw": b"\x00\xff"}

    def test_extra_types_as_strings(self) -> None:
        # kombu's msgpack has no markers (and cannot send these at all): plain strings.
        value = [
            uuid.UUID(int=1),
            decimal.Decimal("2.5"),
            datetime(2030, 1, 2, tzinfo=UTC),
            date(2030, 1, 2),
            time(3, 4),
        ]
        data, _, _ = dumps(value, "msgpack")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == [
            "00000000-0000-0000-0000-000000000001",
            "2.5",
            "2030-01-02T00:00:00+00:00",
            "2030-01-02",
            "03:04:00",
        ]

    def test_markers_are_not_decoded(self) -> None:
        marker = {"__type__": "decimal", "__value__": "1"}
        data, _, _ = dumps([marker], "msgpack")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == [marker]

    def test_unserializable_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match=r"builtins\.object cannot be serialized"):
            dumps([object()], "msgpack")

    def test_huge_int_says_it_does_not_fit(self) -> None:
        with pytest.raises(OverflowError, match=r"integer 18446744073709551616 does not fit"):
            dumps([2**64], "msgpack")
        assert loads(dumps([2**64], "json")[0], JSON, "utf-8", {JSON}) == [2**64]

    def test_garbage_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError, match="not valid msgpack"):
            loads(b"\xc1", MSGPACK, "binary", {MSGPACK})
        with pytest.raises(ProtocolError, match="not valid msgpack"):
            loads(b"\x93\x01", MSGPACK, "binary", {MSGPACK})  # array of 3, 1 item

    def test_missing_driver_says_how_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "msgpack", None)  # makes `import msgpack` fail
        with pytest.raises(ConfigurationError, match=r"pip install 'msgpack>=1\.0'"):
            dumps([1], "msgpack")
        with pytest.raises(ConfigurationError, match=r"pip install 'msgpack>=1\.0'"):
            resolve_accept(["msgpack"])
        with pytest.raises(ConfigurationError, match=r"pip install 'msgpack>=1\.0'"):
            loads(b"\x90", MSGPACK, "binary", {MSGPACK})


class TestPickle:
    def test_round_trip_when_accepted(self) -> None:
        value = ((1, 2), {"when": datetime(2030, 1, 1, tzinfo=UTC)}, {1: {2, 3}})
        data, content_type, encoding = dumps(value, "pickle")
        assert (content_type, encoding) == (PICKLE, "binary")
        assert loads(data, PICKLE, "binary", {PICKLE}) == value

    def test_refused_unless_accepted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def must_not_unpickle(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a refused pickle must never be unpickled")

        data, _, _ = dumps([1], "pickle")
        monkeypatch.setattr(pickle, "loads", must_not_unpickle)
        with pytest.raises(ContentDisallowed, match="add 'pickle' to accept_content"):
            loads(data, PICKLE, "binary", {JSON})

    def test_garbage_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError, match="not a valid pickle"):
            loads(b"\x80\x05garbage", PICKLE, "binary", {PICKLE})

    def test_unpicklable_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match="cannot pickle"):
            dumps([lambda: None], "pickle")


class TestAccept:
    def test_content_type_not_accepted(self) -> None:
        data, _, _ = dumps([1], "msgpack")
        with pytest.raises(ContentDisallowed, match="'application/x-msgpack' is not accepted"):
            loads(data, MSGPACK, "binary", {JSON})

    def test_unknown_content_type_is_disallowed(self) -> None:
        with pytest.raises(ContentDisallowed, match="'text/plain' is not accepted"):
            loads(b"hi", "text/plain", "utf-8", ALL)

    def test_accepted_but_undecodable_content_type(self) -> None:
        with pytest.raises(ContentDisallowed, match="'text/plain' has no decoder"):
            loads(b"hi", "text/plain", "utf-8", {"text/plain"})

    def test_missing_content_type(self) -> None:
        with pytest.raises(ContentDisallowed, match="no content type"):
            loads(b"[]", "", "utf-8", ALL)

    def test_content_type_disallowed_is_a_protocol_error(self) -> None:
        assert issubclass(ContentDisallowed, ProtocolError)

    def test_body_must_be_bytes(self) -> None:
        with pytest.raises(ProtocolError, match="body must be bytes, got str"):
            loads("[]", JSON, "utf-8", ALL)  # type: ignore[arg-type]


class TestResolveAccept:
    def test_names_and_content_types(self) -> None:
        assert resolve_accept(["json", "application/x-msgpack"]) == {JSON, MSGPACK}

    def test_a_single_name(self) -> None:
        assert resolve_accept("json") == {JSON}

    def test_unknown(self) -> None:
        with pytest.raises(ConfigurationError, match="unknown serializer 'xml'"):
            resolve_accept(["json", "xml"])

    def test_empty(self) -> None:
        with pytest.raises(ConfigurationError, match="accept_content is empty"):
            resolve_accept([])

    def test_pickle_warns_once_per_process(self, fresh_pickle_warning: None) -> None:
        with pytest.warns(UserWarning, match="runs arbitrary code"):
            assert resolve_accept(["json", "pickle"]) == {JSON, PICKLE}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_accept(["application/x-python-serialize"]) == {PICKLE}

    def test_no_warning_without_pickle(self, fresh_pickle_warning: None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            resolve_accept(["json", "msgpack"])
        assert serialization._pickle_warned is False
