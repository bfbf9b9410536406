"""Serializers for message bodies: JSON (the default), msgpack and pickle. Pure, no I/O.

Each serializer is known by a short name (``"json"``) and by the MIME content type that
travels with every message (``"application/json"``), as in kombu. ``dumps`` returns the
bytes with the content type and encoding to put on the envelope; ``loads`` refuses any
content type that the caller did not list in ``accept`` *before* decoding, so an
untrusted pickle is never unpickled.

JSON speaks kombu's dialect (``kombu.utils.json``, what Celery 5 sends by default): a value
JSON cannot hold travels as a *marker* ``{"__type__": T, "__value__": V}``:

=============  ===============================  ====================================
``T``          Python type                      ``V``
=============  ===============================  ====================================
``datetime``   ``datetime``                     ``isoformat()`` (naive stays naive)
``date``       ``date``                         ``isoformat()``
``time``       ``time``                         ``isoformat()``
``decimal``    ``Decimal``                      ``str()``
``uuid``       ``UUID``                         ``{"hex": "<32 hex digits>"}``
``bytes``      ``bytes`` that are UTF-8 text    the text
``base64``     any other ``bytes``              base64 text
=============  ===============================  ====================================

``dumps`` writes these byte for byte as kombu does and ``loads`` turns them back into
objects, so a datetime argument keeps its type between celeriac and Celery either way. A
dict that merely looks like a marker (other keys too, or an unknown ``T``) stays a dict.

msgpack is kombu's plain ``packb``/``unpackb``, which has no markers: ``bytes`` travel
natively, and celeriac sends datetimes, UUIDs and Decimals as ISO/plain strings (kombu's
msgpack cannot send them at all), which arrive as strings.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
import uuid
import warnings
from collections.abc import Callable, Collection, Iterable
from datetime import date, datetime, time
from types import ModuleType
from typing import Any

from celeriac._install import install_hint
from celeriac.errors import ConfigurationError, ContentDisallowed, ProtocolError

JSON = "application/json"
MSGPACK = "application/x-msgpack"
PICKLE = "application/x-python-serialize"

#: Serializer name -> content type.
CONTENT_TYPES: dict[str, str] = {"json": JSON, "msgpack": MSGPACK, "pickle": PICKLE}

_NAMES: dict[str, str] = {ct: name for name, ct in CONTENT_TYPES.items()}
_ACCEPTED = ", ".join(repr(name) for name in CONTENT_TYPES)
_PICKLE_WARNING = (
    "accept_content includes pickle: unpickling a message runs arbitrary code, so anyone "
    "who can publish to the broker can take over the worker. Accept pickle only from a "
    "broker that nobody untrusted can write to, or use 'json'."
)
_pickle_warned = False


def content_type_for(serializer: str) -> str:
    """The content type of a serializer given by name (``"json"``) or content type."""
    key = serializer.strip().lower()
    if key in CONTENT_TYPES:
        return CONTENT_TYPES[key]
    if key in _NAMES:
        return key
    raise ConfigurationError(
        f"unknown serializer {serializer!r}: use one of {_ACCEPTED} "
        "(or their content types, e.g. 'application/json')"
    )


def resolve_accept(accept_content: Iterable[str]) -> frozenset[str]:
    """Turn ``accept_content`` (names or content types) into a set of content types.

    Warns once per process when pickle is accepted, and fails early when msgpack is
    accepted but not installed.
    """
    global _pickle_warned
    items = [accept_content] if isinstance(accept_content, str) else list(accept_content)
    accept = frozenset(content_type_for(item) for item in items)
    if not accept:
        raise ConfigurationError(
            f"accept_content is empty, so every message would be refused: list at least "
            f"one of {_ACCEPTED}, e.g. ['json']"
        )
    if MSGPACK in accept:
        _msgpack()
    if PICKLE in accept and not _pickle_warned:
        _pickle_warned = True
        warnings.warn(_PICKLE_WARNING, UserWarning, stacklevel=2)
    return accept


def dumps(obj: Any, serializer: str = "json") -> tuple[bytes, str, str]:
    """Serialize ``obj``; returns ``(data, content_type, content_encoding)``.

    JSON also encodes ``datetime``/``date``/``time``, ``Decimal``, ``UUID`` and ``bytes``
    as kombu's markers (see the module docstring); msgpack encodes the first four as
    strings. Anything else that is not plain data raises ``TypeError``.
    """
    content_type = content_type_for(serializer)
    if content_type == JSON:
        return json_text(obj).encode("utf-8"), JSON, "utf-8"
    if content_type == MSGPACK:
        packed = _msgpack().packb(obj, use_bin_type=True, default=_encode_extra)
        return bytes(packed), MSGPACK, "binary"
    import pickle  # here: most processes never pickle, and a worker's memory counts

    try:
        return pickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL), PICKLE, "binary"
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"cannot pickle {type(obj).__name__}: {exc}") from exc


def loads(data: bytes, content_type: str, content_encoding: str, accept: Collection[str]) -> Any:
    """Deserialize a message body whose content type is in ``accept`` (content types).

    Raises :class:`ContentDisallowed` for a content type not in ``accept`` (nothing is
    decoded then) and :class:`ProtocolError` when the bytes cannot be decoded.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"body must be bytes, got {type(data).__name__}")
    data = bytes(data)
    content_type = content_type.strip().lower() if isinstance(content_type, str) else ""
    if not content_type:
        raise ContentDisallowed(
            "message has no content type, so its body cannot be decoded safely: "
            "the producer must set one (e.g. 'application/json')"
        )
    if content_type not in accept:
        name = _NAMES.get(content_type, content_type)
        raise ContentDisallowed(
            f"content type {content_type!r} is not accepted: add {name!r} to accept_content "
            f"if you trust its producers (accepted now: {sorted(accept)})"
        )
    if content_type == JSON:
        return _loads_json(data, content_encoding)
    if content_type == MSGPACK:
        return _loads_msgpack(data)
    if content_type == PICKLE:
        return _loads_pickle(data)
    raise ContentDisallowed(f"content type {content_type!r} has no decoder: use one of {_ACCEPTED}")


# -- kombu's JSON markers -------------------------------------------------------------------


def _marker(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _encode_json(obj: Any) -> Any:
    """kombu's marker for ``obj``; the same types in the same order as its ``JSONEncoder``."""
    if isinstance(obj, datetime):  # before date: a datetime is a date too
        # kombu calls datetime.isoformat unbound, so a subclass's override is not used.
        return _marker("datetime", datetime.isoformat(obj))
    if isinstance(obj, date):
        return _marker("date", obj.isoformat())
    if isinstance(obj, time):
        return _marker("time", obj.isoformat())
    if _is_decimal(obj):
        return _marker("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _marker("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes):
        try:
            return _marker("bytes", obj.decode("utf-8"))
        except UnicodeDecodeError:
            return _marker("base64", base64.b64encode(obj).decode("ascii"))
    raise _unserializable(obj)


def _is_decimal(obj: object) -> bool:
    # Nothing is a Decimal until someone imported decimal, which a worker need not load.
    decimal = sys.modules.get("decimal")
    return decimal is not None and isinstance(obj, decimal.Decimal)


def _decimal(value: Any) -> Any:
    import decimal

    return decimal.Decimal(value)


def _uuid(value: Any) -> uuid.UUID:
    # kombu writes {"hex": ...} and reads it back with UUID(**value); a plain string costs
    # nothing to accept as well.
    return uuid.UUID(**value) if isinstance(value, dict) else uuid.UUID(value)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda value: datetime.fromisoformat(value).date(),  # kombu's (accepts a datetime)
    "time": time.fromisoformat,
    "decimal": _decimal,
    "uuid": _uuid,
    "bytes": lambda value: value.encode("utf-8"),
    "base64": lambda value: base64.b64decode(value.encode("utf-8")),
}


def _decode_marker(obj: dict[str, Any]) -> Any:
    """The object a kombu marker stands for; any other dict is returned as it is."""
    if len(obj) != 2 or "__type__" not in obj or "__value__" not in obj:
        return obj
    kind = obj["__type__"]
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:  # kombu would refuse the message; plain data is more useful here
        return obj
    try:
        return decoder(obj["__value__"])
    except Exception as exc:  # the decoders raise several types for bad input
        raise ProtocolError(
            f"body has a malformed {kind!r} marker: {_preview(obj['__value__'])} "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Default separators (", ", ": ") and ensure_ascii: byte for byte what kombu sends. The C
# encoder is made once, not per call as JSONEncoder.encode makes it (half of a small
# document's cost), and without the circular-reference bookkeeping, which a shared
# encoder could not keep across threads: a cycle ends in RecursionError instead.
_JSON_CHUNKS = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _encode_json, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
)
_PLAIN_DECODER = json.JSONDecoder()
_MARKER_DECODER = json.JSONDecoder(object_hook=_decode_marker)


def json_text(obj: Any) -> str:
    """JSON as kombu writes it (markers for datetimes, UUIDs, Decimals, bytes; Celery's
    spacing): for task bodies and the other JSON documents on the wire, such as result
    records and Redis envelopes."""
    try:
        return "".join(_JSON_CHUNKS(obj, 0))
    except RecursionError:
        raise ValueError(
            "cannot write JSON: the value contains itself (or is nested too deeply)"
        ) from None


def json_value(text: str | bytes) -> Any:
    """The inverse of :func:`json_text`; raises ``ValueError`` for text that is not JSON."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return (_MARKER_DECODER if '"__type__"' in text else _PLAIN_DECODER).decode(text)


# -- msgpack and errors ------------------------------------------------------------------


def _encode_extra(obj: Any) -> Any:
    """msgpack's fallback: kombu's msgpack has none, so plain strings are the least surprise."""
    if isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID) or _is_decimal(obj):
        return str(obj)
    if isinstance(obj, int):  # only msgpack gets here: JSON encodes every int itself
        raise OverflowError(
            f"integer {obj} does not fit msgpack's 64 bits: pass it as a string, or use json"
        )
    raise _unserializable(obj)


def _unserializable(obj: Any) -> TypeError:
    return TypeError(
        f"object of type {type(obj).__module__}.{type(obj).__qualname__} cannot be "
        "serialized: pass plain data (str, int, float, bool, None, list, dict, plus "
        "datetime, date, time, UUID, Decimal and bytes), e.g. an id instead of the object"
    )


def _text(data: bytes, content_encoding: str) -> str:
    encoding = content_encoding.strip().lower() if isinstance(content_encoding, str) else ""
    encoding = encoding or "utf-8"
    if encoding in ("binary", "8bit", "ascii-8bit"):
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except LookupError:
        raise ProtocolError(f"unknown content encoding {content_encoding!r}") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"body is not valid {encoding} text (byte {exc.start}: {exc.reason})"
        ) from None


def _loads_json(data: bytes, content_encoding: str) -> Any:
    text = _text(data, content_encoding)
    # The object hook costs a Python call per JSON object, so plain bodies (nearly all) skip
    # it; one substring scan tells them apart. A key spelled with \u escapes
    # ('"\u005f_type__"') is missed: kombu would read it, but no JSON encoder writes ASCII so.
    decoder = _MARKER_DECODER if '"__type__"' in text else _PLAIN_DECODER
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise ProtocolError("body is not valid JSON: nested too deeply") from None


def _loads_msgpack(data: bytes) -> Any:
    module = _msgpack()
    try:
        return module.unpackb(data, raw=False)
    except RecursionError:
        raise ProtocolError("body is not valid msgpack: nested too deeply") from None
    except Exception as exc:  # msgpack raises many unrelated types for bad input
        raise ProtocolError(f"body is not valid msgpack: {type(exc).__name__}: {exc}") from None


def _loads_pickle(data: bytes) -> Any:
    import pickle

    try:
        # Safe only because the caller listed pickle in accept_content.
        return pickle.loads(data)
    except RecursionError:
        raise ProtocolError("body is not a valid pickle: nested too deeply") from None
    except Exception as exc:  # unpickling can raise anything
        raise ProtocolError(f"body is not a valid pickle: {type(exc).__name__}: {exc}") from None


def _msgpack() -> ModuleType:
    try:
        return importlib.import_module("msgpack")
    except ImportError:
        raise ConfigurationError(
            f"the msgpack serializer needs the msgpack package: {install_hint('msgpack')}"
        ) from None
