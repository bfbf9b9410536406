"""Serializers: round trips, the accept list, and the errors they raise."""

from __future__ import annotations

import decimal
import json
import pickle
import sys
import uuid
import warnings
from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from celeriac import serialization
from celeriac.errors import ConfigurationError, ContentDisallowed, ProtocolError
from celeriac.serialization import (
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

    def test_extra_types(self) -> None:
        value = {
            "dt": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            "naive": datetime(2030, 1, 2, 3, 4, 5),
            "d": date(2030, 1, 2),
            "t": time(3, 4, 5),
            "u": uuid.UUID("00000000-1111-2222-3333-444444444444"),
            "dec": decimal.Decimal("1.10"),
        }
        data, _, _ = dumps(value, "json")
        assert json.loads(data) == {
            "dt": "2030-01-02T03:04:05.000006+00:00",
            "naive": "2030-01-02T03:04:05",
            "d": "2030-01-02",
            "t": "03:04:05",
            "u": "00000000-1111-2222-3333-444444444444",
            "dec": "1.10",
        }

    def test_unserializable_is_a_type_error_naming_the_type(self) -> None:
        class Widget:
            pass

        with pytest.raises(TypeError, match=r"Widget cannot be serialized: pass plain data"):
            dumps({"w": Widget()})
        with pytest.raises(TypeError, match="set"):
            dumps([{1, 2}])

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


class TestMsgpack:
    def test_round_trip(self) -> None:
        data, content_type, encoding = dumps(PLAIN, "msgpack")
        assert (content_type, encoding) == (MSGPACK, "binary")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == PLAIN

    def test_bytes_survive(self) -> None:
        data, _, _ = dumps({"raw": b"\x00\xff"}, "msgpack")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == {"raw": b"\x00\xff"}

    def test_extra_types_as_strings(self) -> None:
        data, _, _ = dumps([uuid.UUID(int=1), decimal.Decimal("2.5")], "msgpack")
        assert loads(data, MSGPACK, "binary", {MSGPACK}) == [
            "00000000-0000-0000-0000-000000000001",
            "2.5",
        ]

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
        with pytest.raises(ConfigurationError, match=r"pip install 'celeriac\[msgpack\]'"):
            dumps([1], "msgpack")
        with pytest.raises(ConfigurationError, match=r"pip install 'celeriac\[msgpack\]'"):
            resolve_accept(["msgpack"])
        with pytest.raises(ConfigurationError, match=r"pip install 'celeriac\[msgpack\]'"):
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
