"""Transport options (``broker_transport_options``, ``result_backend_transport_options``),
declared by each transport and checked here, once, for all of them.

A misspelt ``visibility_timeout`` silently left at its default, or a ``"5"`` compared as a
string, is the kind of bug that shows up only in production. So every transport declares the
options it reads, each with its default and type, and :func:`checked_options` refuses any
other name (suggesting the one it is close to) and any value of the wrong type, naming the
option and the type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeriac.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Option:
    """One option a transport reads: its default and the type of its value.

    ``float`` means seconds or another number: an int is taken too (as a float). A default
    of None means "the server's or the client's own", and None may be given for it.
    """

    kind: type[float] | type[int] | type[str] | type[bool]
    default: Any


#: The words an error uses for each kind of value.
_KIND_WORDS = {float: "a number", int: "an int", str: "a str", bool: "a bool (True or False)"}


def checked_options(
    options: Mapping[str, Any], declared: Mapping[str, Option], what: str, transport: str
) -> dict[str, Any]:
    """Every declared option's value: the given one, checked (ints made floats where a
    number is asked), else its default.

    ``what`` names the setting (``"broker_transport_options"``) and ``transport`` the one
    reading it (``"the SQLite broker"``), for the error raised on an unknown name or a value
    of the wrong type.
    """
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise ConfigurationError(_unknown(unknown, declared, what, transport))
    values = {name: option.default for name, option in declared.items()}
    for name, value in options.items():
        values[name] = _value(name, value, declared[name], what)
    return values


def _unknown(unknown: list[str], declared: Mapping[str, Option], what: str, who: str) -> str:
    import difflib  # only for a misspelt option

    named = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), sorted(declared), n=1, cutoff=0.6)
        named.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    known = f"knows {', '.join(sorted(declared))}" if declared else "takes none"
    return f"unknown {what} option(s) {', '.join(named)}: {who} {known}"


def _value(name: str, value: Any, option: Option, what: str) -> Any:
    if value is None and option.default is None:
        return None
    kind = option.kind
    is_bool = isinstance(value, bool)
    if kind is bool and is_bool:
        return value
    if kind is float and isinstance(value, (int, float)) and not is_bool:
        return float(value)
    if kind is int and isinstance(value, int) and not is_bool:
        return value
    if kind is str and isinstance(value, str):
        return value
    expected = _KIND_WORDS[kind] + (" or None" if option.default is None else "")
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ConfigurationError(
        f"{what} option {name!r} must be {expected}, not {type(value).__name__} {shown}"
    )
