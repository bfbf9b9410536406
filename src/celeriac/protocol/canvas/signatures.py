"""Signature dicts: Celery's serialised form of a signature, built and checked.

A message carries them in its embed (``chain``, ``callbacks``, ``errbacks``, ``chord``) and
nests them in each other's ``options``; :func:`check` validates one from the wire and names
what is wrong and where.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celeriac.errors import CanvasError

SignatureDict = dict[str, Any]

#: Each ``subtask_type`` and the task name Celery gives signatures of that type.
TASK_NAMES: dict[str | None, str | None] = {
    None: None,
    "chain": "celery.chain",
    "group": "celery.group",
    "chord": "celery.chord",
    "xmap": "celery.map",
    "xstarmap": "celery.starmap",
    "chunks": "celery.chunks",
}

#: The keyword arguments of ``protocol.message.build_task_message`` a :class:`TaskCall`
#: always carries (``None`` when unset).
MESSAGE_OPTION_NAMES: tuple[str, ...] = (
    "group",
    "group_index",
    "chain",
    "chord",
    "callbacks",
    "errbacks",
    "parent_id",
    "root_id",
    "reply_to",
    "replaced_task_nesting",
)

#: The options of a signature that go to the publisher as ``sending.SendOptions`` (the same
#: names; this package may not import ``sending``, a unit test keeps the two equal).
SEND_OPTION_NAMES: frozenset[str] = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "priority",
        "headers",
        "ignore_result",
        "serializer",
        "time_limit",
        "soft_time_limit",
    }
)

#: Options a signature keeps when an applying call gives another value (Celery's
#: ``_IMMUTABLE_OPTIONS``): a task already counted in a group stays in that group.

# -- building signature dicts -------------------------------------------------------------


def signature(
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    subtask_type: str | None = None,
    immutable: bool = False,
) -> SignatureDict:
    """A signature dict in Celery's form (keys in Celery's order)."""
    return {
        "task": task,
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "options": dict(options or {}),
        "subtask_type": subtask_type,
        "immutable": immutable,
    }


def chain_dict(tasks: Sequence[SignatureDict], **options: Any) -> SignatureDict:
    """``chain(*tasks)``: each task gets the previous one's result as its first argument."""
    return signature("celery.chain", (), {"tasks": list(tasks)}, options, subtask_type="chain")


def group_dict(tasks: Sequence[SignatureDict], **options: Any) -> SignatureDict:
    """``group(*tasks)``: the tasks run in parallel; the group's result is their list."""
    return signature("celery.group", (), {"tasks": list(tasks)}, options, subtask_type="group")


def chord_dict(header: SignatureDict, body: SignatureDict, **options: Any) -> SignatureDict:
    """``chord(header, body)``: the body gets the list of the header group's results."""
    return signature(
        "celery.chord",
        (),
        {"kwargs": {}, "header": header, "body": body},
        options,
        subtask_type="chord",
    )


def xmap_dict(task: SignatureDict, it: Iterable[Any], **options: Any) -> SignatureDict:
    """``task.map(it)``: one ``celery.map`` message calling ``task(item)`` for each item."""
    kwargs = {"task": task, "it": list(it)}
    return signature("celery.map", (), kwargs, options, subtask_type="xmap", immutable=True)


def xstarmap_dict(task: SignatureDict, it: Iterable[Any], **options: Any) -> SignatureDict:
    """``task.starmap(it)``: one ``celery.starmap`` message calling ``task(*item)``."""
    kwargs = {"task": task, "it": [list(item) for item in it]}
    return signature("celery.starmap", (), kwargs, options, subtask_type="xstarmap", immutable=True)


def chunks_dict(task: SignatureDict, it: Iterable[Any], n: int, **options: Any) -> SignatureDict:
    """``task.chunks(it, n)``: sent as a group of ``celery.starmap`` messages of ``n`` items."""
    kwargs = {"task": task, "it": [list(item) for item in it], "n": n}
    return signature("celery.chunks", (), kwargs, options, subtask_type="chunks", immutable=True)


# -- validating signature dicts from messages ---------------------------------------------


def check(sig: object, where: str) -> SignatureDict:
    """A checked copy of the signature dict ``sig`` (and of every signature inside it).

    ``where`` names it in the error (``"embed 'chain'[1]"``). Missing ``args``, ``kwargs``,
    ``options``, ``subtask_type`` and ``immutable`` take Celery's defaults; anything else
    malformed raises :class:`~celeriac.errors.CanvasError` naming the problem and where.
    """
    if not isinstance(sig, Mapping):
        raise CanvasError(f"{where}: a signature must be a dict, got {_type(sig)}")
    task = sig.get("task")
    if not isinstance(task, str) or not task:
        raise CanvasError(f"{where}: 'task' must be a non-empty string, got {short(task)}")
    subtask_type = sig.get("subtask_type")
    if subtask_type not in TASK_NAMES:
        known = ", ".join(repr(name) for name in TASK_NAMES)
        raise CanvasError(f"{where}: unknown subtask_type {short(subtask_type)} (one of {known})")
    args = sig.get("args", [])
    if not isinstance(args, list | tuple):
        raise CanvasError(f"{where}: 'args' must be a list, got {_type(args)}")
    kwargs = sig.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise CanvasError(f"{where}: 'kwargs' must be a dict, got {_type(kwargs)}")
    options = sig.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise CanvasError(f"{where}: 'options' must be a dict, got {_type(options)}")
    immutable = sig.get("immutable", False)
    if not isinstance(immutable, bool):
        raise CanvasError(f"{where}: 'immutable' must be true or false, got {short(immutable)}")
    checked = signature(
        task,
        copy.deepcopy(list(args)),
        _check_kwargs(subtask_type, kwargs, where),
        _check_options(options, where),
        subtask_type=subtask_type,
        immutable=immutable,
    )
    for key, value in sig.items():  # keys Celery does not write are kept as they came
        if key not in checked:
            checked[key] = copy.deepcopy(value)
    return checked


def check_list(sigs: object, where: str) -> list[SignatureDict]:
    """:func:`check` for a list of signature dicts (an embed ``chain``, ``callbacks``...)."""
    if not isinstance(sigs, list | tuple):
        raise CanvasError(f"{where}: expected a list of signatures, got {_type(sigs)}")
    return [check(sig, f"{where}[{index}]") for index, sig in enumerate(sigs)]


def _check_kwargs(subtask_type: str | None, kwargs: Mapping[str, Any], where: str) -> Any:
    if subtask_type is None:
        return copy.deepcopy(dict(kwargs))
    # Signatures inside are copied by their own check, once: copying them here too would
    # cost a canvas nested n deep n copies of its innermost signatures.
    inside = _SIGNATURE_KWARGS.get(subtask_type, ("task",))
    checked = {
        key: value if key in inside else copy.deepcopy(value) for key, value in kwargs.items()
    }
    if subtask_type in ("chain", "group"):
        checked["tasks"] = check_list(_required(kwargs, "tasks", where), f"{where} tasks")
    elif subtask_type == "chord":
        header = _required(kwargs, "header", where)
        if isinstance(header, list | tuple):
            checked["header"] = check_list(header, f"{where} header")
        else:
            checked["header"] = check(header, f"{where} header")
            if checked["header"]["subtask_type"] != "group":
                raise CanvasError(f"{where} header: a chord's header must be a group or a list")
        checked["body"] = check(_required(kwargs, "body", where), f"{where} body")
        inner = kwargs.get("kwargs", {})
        if not isinstance(inner, Mapping):
            raise CanvasError(f"{where}: kwargs 'kwargs' must be a dict, got {_type(inner)}")
    else:  # xmap, xstarmap, chunks
        checked["task"] = check(_required(kwargs, "task", where), f"{where} task")
        items = _required(kwargs, "it", where)
        if not isinstance(items, list | tuple):
            raise CanvasError(f"{where}: kwargs 'it' must be a list, got {_type(items)}")
        if subtask_type == "chunks":
            size = _required(kwargs, "n", where)
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise CanvasError(f"{where}: chunk size 'n' must be a positive int, got {size!r}")
    return checked


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    for key in ("task_id", "group_id", "parent_id", "root_id", "reply_to"):
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            raise CanvasError(f"{where}: option {key!r} must be a string, got {_type(value)}")
    index = options.get("group_index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise CanvasError(f"{where}: option 'group_index' must be an int, got {_type(index)}")
    checked = {key: copy.deepcopy(value) for key, value in options.items() if key not in _NESTED}
    for key in ("link", "link_error"):
        value = options.get(key)
        if value is not None:
            value = [value] if isinstance(value, Mapping) else value
            checked[key] = check_list(value, f"{where} option {key!r}")
        elif key in options:
            checked[key] = None
    if options.get("chain") is not None:
        checked["chain"] = check_list(options["chain"], f"{where} option 'chain'")
    elif "chain" in options:
        checked["chain"] = None
    if options.get("chord") is not None:
        checked["chord"] = check(options["chord"], f"{where} option 'chord'")
    elif "chord" in options:
        checked["chord"] = None
    return checked


_NESTED = frozenset({"link", "link_error", "chain", "chord"})
#: The kwargs holding signatures, for each kind of canvas (map, starmap, chunks: "task").
_SIGNATURE_KWARGS = {"chain": ("tasks",), "group": ("tasks",), "chord": ("header", "body")}


def _required(kwargs: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in kwargs:
        raise CanvasError(f"{where}: kwargs lack {key!r}")
    return kwargs[key]


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def short(value: object) -> str:
    """``value`` as an error message quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
