"""Celery's canvas: signatures, and the chains, groups and chords made of them.

``Signature`` and :func:`signature` live in :mod:`celeriac.canvas.signature`; ``chain``,
``group``, ``chord``, ``xmap``, ``xstarmap`` and ``chunks`` in
:mod:`celeriac.canvas.composites`. Applying one turns it into messages with
``protocol.canvas.apply`` and publishes them with :mod:`celeriac.canvas.publish` (which the
worker uses too, for the steps it publishes); :mod:`celeriac.canvas.eager` runs one here.
"""

from celeriac.canvas.composites import chain, chord, chunks, group, xmap, xstarmap
from celeriac.canvas.signature import Signature, maybe_signature, signature, subtask

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
