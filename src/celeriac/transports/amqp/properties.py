"""AMQP message properties, written as pamqp writes them but faster.

pamqp encodes properties one value at a time through a table of encoders, which made up a
quarter of the CPU a confirmed publish costs (a Celery message has twenty headers). This
writes the same bytes directly for the values task messages carry (strings, integers,
booleans, nulls, and lists and tables of them) and hands anything else to pamqp, so the
wire format stays pamqp's: ``tests/unit/test_amqp_properties.py`` compares the two on
generated properties. One difference: a float is written as a 64-bit double, as py-amqp
(Celery's driver) writes it, not pamqp's 32-bit float, which loses all but 7 digits.

Text that is not UTF-8. AMQP's short strings (``content_type``, ``correlation_id``,
``reply_to``, header names...) are bytes on the wire, and RabbitMQ passes on whatever a peer
sent. pamqp decodes them as strict UTF-8 while it reads a frame, so one such message used to
end the whole connection (aiormq's ``InvalidFrameError``), and RabbitMQ then handed it to the
next connection, and the next. :func:`read_text_leniently` makes pamqp decode them with
``surrogateescape`` instead: the message arrives, the worker rejects it as any bad message
(dead letter with its reason), and :class:`Properties` writes the escaped text back as the
exact bytes it came as. Long strings need nothing: pamqp gives bytes for those.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from aiormq import spec
from pamqp import decode, encode

_LENGTH = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")
_SIGNED = (
    (-(2**7), 2**7 - 1, b"b", struct.Struct(">b")),
    (-(2**15), 2**15 - 1, b"s", struct.Struct(">h")),
    (0, 2**16 - 1, b"u", struct.Struct(">H")),
    (-(2**31), 2**31 - 1, b"I", struct.Struct(">i")),
    (0, 2**32 - 1, b"i", struct.Struct(">I")),
    (-(2**63), 2**63 - 1, b"l", struct.Struct(">q")),
)
_EMPTY_TABLE = b"\x00\x00\x00\x00"
_NAMES: dict[str, bytes] = {}  # table keys as written (length byte and UTF-8)


class Properties(spec.Basic.Properties):
    """``spec.Basic.Properties`` with a faster ``marshal`` (same bytes)."""

    def marshal(self) -> bytes:
        flags = 0
        parts = []
        for name in self.__slots__:
            value = getattr(self, name)
            if value is None or value == "":
                continue
            flags |= self.flags[name]
            kind = _KINDS[name]
            if kind == "shortstr" and type(value) is str:
                data = value.encode("utf-8", "surrogateescape")
                if len(data) > 255:
                    return bytes(super().marshal())  # pamqp's error
                parts.append(bytes((len(data),)) + data)
            elif kind == "octet" and type(value) is int and 0 <= value <= 255:
                parts.append(bytes((value,)))
            elif kind == "table":
                parts.append(_table(value))
            else:
                parts.append(self.encode_property(name, value))
        return struct.pack(">H", flags) + b"".join(parts)


_KINDS: dict[str, str] = {
    name: getattr(spec.Basic.Properties, "_" + name) for name in spec.Basic.Properties.__slots__
}


def _table(value: Any) -> bytes:
    if not value:
        return _EMPTY_TABLE
    if type(value) is not dict:
        return bytes(encode.field_table(value))
    parts = []
    for key, item in sorted(value.items()):
        name = _NAMES.get(key)
        if name is None:
            data = key.encode("utf-8", "surrogateescape")
            if len(data) > 128:  # pamqp truncates (and warns): leave the whole table to it
                return bytes(encode.field_table(value))
            name = bytes((len(data),)) + data
            if len(_NAMES) < 1000:  # the same few header names, message after message
                _NAMES[key] = name
        parts.append(name)
        parts.append(_value(item))
    body = b"".join(parts)
    return _LENGTH.pack(len(body)) + body


def _value(item: Any) -> bytes:
    kind = type(item)
    if kind is str:
        data: bytes = item.encode("utf-8", "surrogateescape")
        return b"S" + _LENGTH.pack(len(data)) + data
    if item is None:
        return b"V"
    if kind is bool:
        return b"t\x01" if item else b"t\x00"
    if kind is int and not encode.DEPRECATED_RABBITMQ_SUPPORT:
        for low, high, code, packer in _SIGNED:
            if low <= item <= high:
                return code + packer.pack(item)
    elif kind is float:
        # 64 bits, as py-amqp (Celery's driver) writes them: pamqp writes 32 ("f"), which
        # turns Celery's pidbox expiry 1796298819.5 into 1796298880.0 and 0.1 into 0.100000001.
        return b"d" + _DOUBLE.pack(item)
    elif kind is dict:
        return b"F" + _table(item)
    elif kind is list:
        body = b"".join(_value(element) for element in item)
        return b"A" + _LENGTH.pack(len(body)) + body
    return bytes(encode.encode_table_value(item))


# -- reading -------------------------------------------------------------------------------

_Decoder = Callable[[bytes], tuple[int, Any]]


def _short_text(value: bytes) -> tuple[int, str]:
    """A short string (length byte, then bytes), as text even when it is not UTF-8."""
    if not value:
        raise ValueError("Could not unpack short string value")
    end = value[0] + 1
    if end > len(value):
        raise ValueError("Short string length exceeds available data")
    return end, value[1:end].decode("utf-8", "surrogateescape")


def _table_with_any_names(strict: _Decoder) -> _Decoder:
    """pamqp's table decoder, with names that are not UTF-8 read as escaped text (it reads
    the names itself); tables whose names are UTF-8, all of them in practice, take pamqp's
    own path unchanged."""

    def table(value: bytes) -> tuple[int, dict[str, Any]]:
        try:
            return strict(value)
        except UnicodeDecodeError:
            pass
        (length,) = _LENGTH.unpack_from(value)
        end = 4 + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        offset, data = 4, {}
        while offset < end:
            used, name = _short_text(value[offset:end])
            used_by_value, item = decode.embedded_value(value[offset + used : end])
            data[name] = item
            offset += used + used_by_value
        return end, data

    return table


def read_text_leniently() -> None:
    """Make pamqp read short strings and table names that are not UTF-8 as escaped text
    (see the module docstring). Process-wide, as pamqp's decoders are; installed once, when
    :mod:`celeriac.transports.amqp.connection` is imported."""
    if decode.METHODS["shortstr"] is _short_text:
        return
    table = _table_with_any_names(decode.field_table)
    decode.METHODS["shortstr"] = _short_text
    decode.METHODS["table"] = table
    decode.TABLE_MAPPING[b"F"] = table
    decode.short_str = _short_text
    decode.field_table = table  # type: ignore[assignment]  # same shape, any names
