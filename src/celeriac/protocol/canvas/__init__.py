"""Celery's canvas on the wire: signature dicts, and the messages that applying one publishes.

Pure: no I/O, no app. The client (``apply_async`` of a chain, group or chord) and the worker
(a chain's next step, ``link`` callbacks, a chord's body) both turn a signature dict into
messages here, so a canvas started by one and continued by the other (or by Celery) agrees
on every id and embed. ``shared/celery-protocol/WAVE2.md`` §1 describes the format; the unit
tests rebuild the messages real Celery 5.7 published (``tests/fixtures/celery-canvas/``).

A signature is a plain dict, as Celery serialises one::

    {"task": "proj.add", "args": [2], "kwargs": {}, "options": {"task_id": "..."},
     "subtask_type": None, "immutable": False}

``subtask_type`` says what it is: ``None`` a task, ``"chain"`` (``celery.chain``, kwargs
``{"tasks": [...]}`` in running order), ``"group"`` (``celery.group``, the same kwargs),
``"chord"`` (``celery.chord``, kwargs ``{"kwargs": {}, "header": <group>, "body": <sig>}``),
``"xmap"``/``"xstarmap"`` (``celery.map``/``celery.starmap``, kwargs ``{"task", "it"}``) and
``"chunks"`` (``celery.chunks``, kwargs ``{"task", "it", "n"}``, sent as a group of starmaps).

:func:`apply` is Celery's ``signature.apply_async(args, kwargs, **options)``: it returns an
:class:`Expansion`, the messages to publish (:class:`TaskCall`), the chords whose size the
result store must know first (:class:`ChordStart`) and the ids of what was applied (a tree of
:class:`TaskNode`/:class:`GroupNode`). :func:`freeze` assigns the ids without applying.
Only a message's first step is published; every later one is published by the worker that
ran the step before it, from the signature dicts the message carries.
"""

from celeriac.protocol.canvas.applying import (
    apply,
    apply_callbacks,
    apply_errbacks,
    chord_size,
    chord_unlock_call,
    freeze,
)
from celeriac.protocol.canvas.expansion import (
    ChordStart,
    Expansion,
    GroupNode,
    ResultNode,
    TaskCall,
    TaskNode,
    result_tuple,
)
from celeriac.protocol.canvas.signatures import (
    MESSAGE_OPTION_NAMES,
    SEND_OPTION_NAMES,
    TASK_NAMES,
    SignatureDict,
    chain_dict,
    check,
    check_list,
    chord_dict,
    chunks_dict,
    group_dict,
    signature,
    xmap_dict,
    xstarmap_dict,
)

__all__ = [
    "MESSAGE_OPTION_NAMES",
    "SEND_OPTION_NAMES",
    "TASK_NAMES",
    "ChordStart",
    "Expansion",
    "GroupNode",
    "ResultNode",
    "SignatureDict",
    "TaskCall",
    "TaskNode",
    "apply",
    "apply_callbacks",
    "apply_errbacks",
    "chain_dict",
    "check",
    "check_list",
    "chord_dict",
    "chord_size",
    "chord_unlock_call",
    "chunks_dict",
    "freeze",
    "group_dict",
    "result_tuple",
    "signature",
    "xmap_dict",
    "xstarmap_dict",
]
