"""JSON text for many documents that are mostly the same, written in one pass.

A batch of task messages differs only in a few values per message (ids, arguments); the
rest (twenty headers, the properties) is shared. Encoding each document in full repeats
that work for every message, and it is most of a batched publish's cost. Here the shared
part is encoded once, as a :class:`Template` with a slot where each differing value goes,
and each document is the template's pieces joined with its own values encoded.

"Shared" means *the same object* (``is``), never merely equal: equal values can still
encode differently (``1``, ``1.0`` and ``True`` are equal), the same object cannot. Built
with :func:`differing_keys`, a template gives exactly what
:func:`~celeriac.protocol.serialization.json_text` gives for each document.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from operator import is_
from typing import Any

from celeriac.protocol.serialization import json_text

#: A value's place in a document: the keys from the top, one per nested dict.
Path = tuple[str, ...]

# What json_text writes for a string (celeriac's JSON escapes non-ASCII, as kombu's does).
_quoted = encode_basestring_ascii


def differing_keys(dicts: Sequence[dict[str, Any]]) -> list[str] | None:
    """The keys whose value is not one shared object in all of ``dicts``, in key order;
    None when the dicts do not all have the first one's keys in its order."""
    first = dicts[0]
    keys = list(first)
    shared = list(first.values())
    # Which values each dict shares with the first, as a tuple of flags: dicts copied
    # from one template have one pattern, so the set stays tiny.
    patterns = set()
    for other in dicts:
        if list(other) != keys:
            return None
        patterns.add(tuple(map(is_, shared, other.values())))
    return [key for i, key in enumerate(keys) if not all(pattern[i] for pattern in patterns)]


class Template:
    """The JSON text of ``document`` with a slot at each of ``slots`` (given in the order
    the document's text has them): :meth:`render` fills the slots with other values, in
    that order, and leaves the rest as it was."""

    def __init__(self, document: dict[str, Any], slots: Sequence[Path]) -> None:
        token = secrets.token_hex(8)
        markers = [f"\x00celeriac-{token}-{i}" for i in range(len(slots))]
        text = json_text(_replaced(document, list(slots), markers))
        pieces = []
        for marker in markers:
            quoted = json_text(marker)
            if text.count(quoted) != 1:
                # A random token cannot be in the document, so a slot came out of order.
                raise ValueError(f"slots {list(slots)} are not in the document's order")
            before, text = text.split(quoted)
            pieces.append(before)
        pieces.append(text)
        # One %-format per document: the pieces with each % doubled, a %s per slot.
        self._format = "%s".join(piece.replace("%", "%%") for piece in pieces)

    def render(self, values: Sequence[Any]) -> str:
        """The document's text with ``values`` in its slots."""
        # Most slot values are strings (ids, reprs, a body): quote them directly.
        return self._format % tuple(
            [_quoted(value) if type(value) is str else json_text(value) for value in values]
        )


def _replaced(document: Any, paths: list[Path], markers: list[str]) -> Any:
    """A copy of ``document`` with the value at each path replaced by its marker."""
    if paths == [()]:
        return markers[0]
    copy = dict(document)
    for key in copy:
        below = [(p[1:], m) for p, m in zip(paths, markers, strict=True) if p[0] == key]
        if below:
            copy[key] = _replaced(copy[key], [p for p, _ in below], [m for _, m in below])
    return copy
