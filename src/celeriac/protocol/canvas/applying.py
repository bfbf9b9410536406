"""Applying a signature dict: Celery's ``apply_async`` of every kind of signature, as the
messages it publishes (an :class:`~celeriac.protocol.canvas.expansion.Expansion`), and
Celery's ``freeze``, which assigns the ids they will run under."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac import ids
from celeriac.errors import CanvasError
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
    SignatureDict,
    check,
    check_list,
    chord_dict,
    group_dict,
    short,
    xstarmap_dict,
)
from celeriac.protocol.message import parse_iso

_KEPT_OPTIONS = frozenset({"group_id"})

#: A chain's options that it acts on itself rather than passing to its first task.
_CHAIN_RUN_OPTIONS = frozenset(
    {"chord", "group_id", "group_index", "link", "link_error", "parent_id", "root_id", "task_id"}
)


def apply(
    sig: SignatureDict,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    chain: list[SignatureDict] | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    priority: int | None = None,
    reply_to: str | None = None,
    new_id: Callable[[], str] = ids.uuid,
    **options: Any,
) -> Expansion:
    """Celery's ``sig.apply_async(args, kwargs, **options)``, as the messages it publishes.

    ``args`` are prepended to the signature's own (unless it is immutable) and ``kwargs``
    merged into its own; ``options`` (``task_id``, ``group_id``, ``group_index``, ``chord``,
    ``link``, ``link_error``, ``queue``, ``countdown``...) override the signature's, except a
    ``group_id`` it already has; ``None`` values are ignored. ``chain`` is the embed chain
    for the first message (the remaining steps, last first). ``parent_id`` and ``root_id``
    go in the headers of the messages published now; ``reply_to`` in the options of each
    signature frozen here (the client's reply queue). A worker continues a chain with
    ``apply(chain[-1], (retval,), chain=chain[:-1], parent_id=..., root_id=...,
    priority=...)``. Raises :class:`~celeriac.errors.CanvasError` for a malformed ``sig``.
    """
    context = _Context(new_id, reply_to, parent_id, root_id)
    call = {key: value for key, value in options.items() if value is not None}
    if chain is not None:
        call["chain"] = chain
    if priority is not None:
        call["priority"] = priority
    result = _apply(check(sig, "signature"), list(args), dict(kwargs or {}), call, context)
    return Expansion(context.calls, context.chords, result)


def freeze(
    sig: SignatureDict,
    *,
    new_id: Callable[[], str] = ids.uuid,
    reply_to: str | None = None,
    task_id: str | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    chord: SignatureDict | None = None,
) -> tuple[SignatureDict, ResultNode]:
    """A copy of ``sig`` with every id it will run under assigned (Celery's ``freeze``), and
    those ids as a result tree. Applying the copy publishes under the same ids.

    ``task_id`` is the id of the task whose result is the signature's (a chain's last step,
    a chord's body; a group's own id). A ``chunks`` signature comes back as the group of
    ``celery.starmap`` signatures it is sent as.
    """
    frozen = check(sig, "signature")
    context = _Context(new_id, reply_to, None, None)
    node = _freeze(
        frozen, context, task_id=task_id, group_id=group_id, chord=chord, group_index=group_index
    )
    return frozen, node


def apply_callbacks(
    callbacks: Sequence[SignatureDict],
    retval: Any,
    *,
    parent_id: str,
    root_id: str | None,
    priority: int | None = None,
    reply_to: str | None = None,
    new_id: Callable[[], str] = ids.uuid,
) -> list[Expansion]:
    """What a worker publishes for a finished task's ``link`` callbacks (its embed
    ``callbacks``), as Celery's does: one callback is applied alone; of several, each group
    is applied on its own and all the others together as one new group."""
    common: dict[str, Any] = {
        "parent_id": parent_id,
        "root_id": root_id,
        "priority": priority,
        "reply_to": reply_to,
        "new_id": new_id,
    }
    if len(callbacks) == 1:
        return [apply(callbacks[0], (retval,), **common)]
    checked = check_list(list(callbacks), "callbacks")
    groups = [sig for sig in checked if sig["subtask_type"] == "group"]
    others = [sig for sig in checked if sig["subtask_type"] != "group"]
    expansions = [apply(group, (retval,), **common) for group in groups]
    if others:
        expansions.append(apply(group_dict(others), (retval,), **common))
    return expansions


def apply_errbacks(
    errbacks: Sequence[SignatureDict],
    failed_id: str,
    *,
    root_id: str | None,
    reply_to: str | None = None,
    new_id: Callable[[], str] = ids.uuid,
) -> Expansion:
    """The messages of a failed task's old-style errbacks (those the worker does not call in
    process): one group of them, each called with the failed task's id first."""
    return apply(
        group_dict(list(errbacks)),
        (failed_id,),
        parent_id=failed_id,
        root_id=root_id or failed_id,
        reply_to=reply_to,
        new_id=new_id,
    )


def chord_unlock_call(
    start: ChordStart,
    *,
    new_id: Callable[[], str] = ids.uuid,
    countdown: float = 1.0,
    interval: float | None = None,
    max_retries: int | None = None,
    exchange_type: str | None = None,
    reply_to: str | None = None,
) -> TaskCall:
    """The ``celery.chord_unlock`` message that joins ``start`` on a result store without a
    native join: a task (Celery's, or the worker's own) that polls the header's results
    every ``interval`` seconds (``None``: its default, 1 s) and then applies the body.

    Published ``countdown`` seconds from now, with the body's ``queue`` and ``priority``,
    its result ignored, and ``reply_to`` as the header's. ``exchange_type`` is the body
    queue's exchange type, which Celery's unlock task reuses for its retries (``"direct"``
    on AMQP).
    """
    kwargs: dict[str, Any] = {
        "interval": interval,
        "max_retries": max_retries,
        "result": [result_tuple(node) for node in start.header],
    }
    if exchange_type is not None:
        kwargs["_chord_unlock_exchange_type"] = exchange_type
    options: dict[str, Any] = dict.fromkeys(MESSAGE_OPTION_NAMES)
    options.update(reply_to=reply_to, countdown=countdown, ignore_result=True)
    for key in ("queue", "priority"):
        if start.body["options"].get(key) is not None:
            options[key] = start.body["options"][key]
    return TaskCall("celery.chord_unlock", new_id(), [start.group_id, start.body], kwargs, options)


def chord_size(sig: SignatureDict) -> int:
    """How many results a chord whose header member is ``sig`` waits for from it (Celery's
    ``_descend``): a task 1, a group the sum of its members, a chain its last step's, a
    chord its body's, chunks one per chunk."""
    subtask_type = sig.get("subtask_type")
    kwargs = sig["kwargs"]
    if subtask_type == "group":
        return sum(chord_size(member) for member in kwargs["tasks"])
    if subtask_type == "chain":
        for step in reversed(kwargs["tasks"]):
            size = chord_size(step)
            if size:
                return size
        return 0
    if subtask_type == "chord":
        return chord_size(kwargs["body"])
    if subtask_type == "chunks":
        return -(-len(kwargs["it"]) // int(kwargs["n"]))
    return 1


# -- the machinery ------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    """What one application shares: where ids come from, the ids of the task publishing
    (headers only), and what it has published so far."""

    new_id: Callable[[], str]
    reply_to: str | None
    parent_id: str | None
    root_id: str | None
    calls: list[TaskCall] = field(default_factory=list)
    chords: list[ChordStart] = field(default_factory=list)


def _merge(own: Mapping[str, Any], call: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's option merge: the call's options win, except those the signature keeps."""
    merged = dict(own)
    for key, value in call.items():
        if value is not None and not (key in _KEPT_OPTIONS and key in own):
            merged[key] = value
    return merged


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return [value] if isinstance(value, Mapping) else list(value)


def _apply(
    sig: SignatureDict,
    args: list[Any],
    kwargs: dict[str, Any],
    call: dict[str, Any],
    context: _Context,
) -> ResultNode:
    subtask_type = sig["subtask_type"]
    if subtask_type == "chain":
        return _apply_chain(sig, args, kwargs, call, context)
    if subtask_type == "group":
        return _apply_group(sig, args, kwargs, call, context)
    if subtask_type == "chord":
        return _apply_chord(sig, args, kwargs, call, context)
    if subtask_type == "chunks":
        _chunks_to_group(sig)
        return _apply_group(sig, args, kwargs, call, context)
    if subtask_type in ("xmap", "xstarmap"):
        sig["immutable"] = True  # the task and items are its kwargs: no partial arguments
    return _apply_task(sig, args, kwargs, call, context)


def _apply_task(
    sig: SignatureDict,
    args: list[Any],
    kwargs: dict[str, Any],
    call: dict[str, Any],
    context: _Context,
) -> TaskNode:
    options = _merge(sig["options"], call)
    if sig["immutable"]:
        args, kwargs = list(sig["args"]), dict(sig["kwargs"])
    else:
        args, kwargs = [*args, *sig["args"]], {**sig["kwargs"], **kwargs}
    task_id = options.get("task_id") or context.new_id()
    message_options: dict[str, Any] = {
        "group": options.get("group_id"),
        "group_index": options.get("group_index"),
        "chain": options.get("chain"),
        "chord": options.get("chord"),
        "callbacks": _as_list(options.get("link")),
        "errbacks": _as_list(options.get("link_error")),
        "parent_id": context.parent_id or options.get("parent_id"),
        "root_id": context.root_id or options.get("root_id"),
        "reply_to": options.get("reply_to") or context.reply_to,
        "replaced_task_nesting": options.get("replaced_task_nesting"),
    }
    for key in SEND_OPTION_NAMES:
        value = options.get(key)
        if value is not None:
            message_options[key] = (
                parse_iso(value) if key in ("eta", "expires") and isinstance(value, str) else value
            )
    context.calls.append(TaskCall(sig["task"], task_id, args, kwargs, message_options))
    return TaskNode(task_id)


def _apply_chain(
    sig: SignatureDict,
    args: list[Any],
    kwargs: dict[str, Any],
    call: dict[str, Any],
    context: _Context,
) -> ResultNode:
    options = _merge(sig["options"], call)
    args = list(sig["args"]) if sig["immutable"] else [*args, *sig["args"]]
    steps = _chain_steps(sig)
    if not steps:
        raise CanvasError(f"a chain needs at least one task: {short(sig)}")
    errbacks = _as_list(options.get("link_error")) or []
    # Last step first, as Celery: a group followed by a step becomes a chord with that
    # step as its body, and the last step takes the chain's id, group and chord.
    frozen: list[SignatureDict] = []
    results: list[ResultNode] = []
    for step in reversed(steps):
        if step["subtask_type"] == "group" and frozen:
            body_node = results.pop()
            step = chord_dict(step, frozen.pop())
            if results:  # the step after the body now follows the chord
                _unlink(results[-1], body_node)
        if not frozen:
            node = _freeze(
                step,
                context,
                task_id=options.get("task_id"),
                group_id=options.get("group_id"),
                chord=options.get("chord"),
                group_index=options.get("group_index"),
            )
        else:
            node = _freeze(step, context)
        if results:
            _first_of(results[-1]).parent = node
        for errback in errbacks:
            _link_error(step, errback)
        frozen.append(step)
        results.append(node)
    for callback in _as_list(options.get("link")) or []:
        _link(frozen[0], callback)
    first = frozen.pop()
    first_call = {key: value for key, value in options.items() if key not in _CHAIN_RUN_OPTIONS}
    first_call["chain"] = [*(options.get("chain") or []), *frozen]
    applied = _apply(first, args, kwargs, first_call, context)
    return applied if not frozen else results[0]


def _chain_steps(sig: SignatureDict) -> list[SignatureDict]:
    """A chain's steps as they run: nested chains spliced in, chunks turned into their
    group, one-member groups unwrapped, empty groups dropped (unless nothing else is left)
    and chords split from the tail of a chain body (see :func:`_unroll_body`)."""
    steps: list[SignatureDict] = []
    pending = list(reversed(sig["kwargs"]["tasks"]))
    while pending:
        step = pending.pop()
        replacement = _replaced_step(step)
        if replacement is None:
            steps.append(step)
        else:
            pending.extend(reversed(replacement))
    if not steps and any(t["subtask_type"] == "group" for t in sig["kwargs"]["tasks"]):
        steps.append(group_dict([]))
    return steps


def _replaced_step(step: SignatureDict) -> list[SignatureDict] | None:
    """The steps that run in place of ``step`` in a chain, or ``None`` to run it as it is."""
    subtask_type = step["subtask_type"]
    if subtask_type == "chunks":
        _chunks_to_group(step)
        return [step]
    if subtask_type == "group" and len(step["kwargs"]["tasks"]) <= 1:
        return list(step["kwargs"]["tasks"])
    if subtask_type == "chain":
        return _unchain(step)
    if subtask_type == "chord" and _led_by_task(step["kwargs"]["body"]):
        return _unroll_body(step)
    return None


def _unchain(chain: SignatureDict) -> list[SignatureDict]:
    """A chain's tasks, its ``link`` given to the last and its ``link_error`` to each."""
    tasks: list[SignatureDict] = chain["kwargs"]["tasks"]
    for callback in _as_list(chain["options"].get("link")) or []:
        if tasks:
            _link(tasks[-1], callback)
    for errback in _as_list(chain["options"].get("link_error")) or []:
        for task in tasks:
            _link_error(task, errback)
    return tasks


def _led_by_task(body: SignatureDict) -> bool:
    tasks = body["kwargs"].get("tasks") if body["subtask_type"] == "chain" else None
    return bool(tasks) and tasks[0]["subtask_type"] != "group"  # type: ignore[index]


def _unroll_body(chord: SignatureDict) -> list[SignatureDict]:
    """``chord(header, chain(a, b, c))`` as ``chord(header, a), b, c``, as Celery 5.7 runs
    it inside a chain: every header message carries the chord's body, so only its first
    task rides there and the rest follows in that task's chain."""
    body = chord["kwargs"]["body"]
    tasks = _unchain(body)
    first_options = {k: v for k, v in body["options"].items() if k not in _CHAIN_RUN_OPTIONS}
    tasks[0]["options"] = _merge(tasks[0]["options"], first_options)
    chord["kwargs"]["body"] = tasks[0]
    return [chord, *tasks[1:]]


def _unroll_chords(tasks: list[SignatureDict]) -> list[SignatureDict]:
    """A chord body chain's tasks with :func:`_unroll_body` applied to the chords in it."""
    unrolled: list[SignatureDict] = []
    pending = list(reversed(tasks))
    while pending:
        task = pending.pop()
        if task["subtask_type"] == "chain":
            task["kwargs"]["tasks"] = _unroll_chords(task["kwargs"]["tasks"])
        if task["subtask_type"] == "chord" and _led_by_task(task["kwargs"]["body"]):
            pending.extend(reversed(_unroll_body(task)))
        else:
            unrolled.append(task)
    return unrolled


def _apply_group(
    sig: SignatureDict,
    args: list[Any],
    kwargs: dict[str, Any],
    call: dict[str, Any],
    context: _Context,
) -> GroupNode:
    options = _merge(sig["options"], call)
    if options.get("link") or options.get("link_error"):
        raise CanvasError(
            "a group takes no link or link_error: make it a chord to run a task after it,"
            " or put the error callback on each of its tasks"
        )
    group_id = options.pop("task_id", None) or context.new_id()
    options["group_id"] = group_id
    chord = options.pop("chord", None)
    options.pop("group_index", None)
    children: list[ResultNode] = []
    for index, member in enumerate(_group_members(sig)):
        _freeze(member, context, group_id=group_id, group_index=index)
        member_call = dict(options)
        if chord is not None:
            member_call["chord"] = chord
        children.append(_apply(member, args, kwargs, member_call, context))
    return GroupNode(group_id, children)


def _group_members(sig: SignatureDict) -> list[SignatureDict]:
    """A group's tasks with nested groups flattened and empty chains dropped."""
    members: list[SignatureDict] = []
    for task in sig["kwargs"]["tasks"]:
        if task["subtask_type"] == "group":
            members.extend(_group_members(task))
        elif task["subtask_type"] == "chunks":
            _chunks_to_group(task)
            members.extend(_group_members(task))
        elif task["subtask_type"] == "chain" and not task["kwargs"]["tasks"]:
            continue
        else:
            members.append(task)
    return members


def _apply_chord(
    sig: SignatureDict,
    args: list[Any],
    kwargs: dict[str, Any],
    call: dict[str, Any],
    context: _Context,
) -> ResultNode:
    args = list(sig["args"]) if sig["immutable"] else [*args, *sig["args"]]
    kwargs = {**sig["kwargs"].get("kwargs", {}), **kwargs}
    header = _chord_header(sig)
    body = sig["kwargs"]["body"]
    if body["subtask_type"] == "chain":
        body["kwargs"]["tasks"] = _unroll_chords(body["kwargs"]["tasks"])
    options = _merge(sig["options"], call)
    header_delay: dict[str, Any] = {
        key: options.pop(key) for key in ("countdown", "eta") if key in options
    }
    task_id = options.pop("task_id", None)
    for callback in _as_list(options.pop("link", None)) or []:
        _link(body, callback)
    for errback in _as_list(options.pop("link_error", None)) or []:
        _link_error(body, errback)
    # The body inherits the call's options (the chain after the chord, the group and chord
    # the chord is part of...), but not the parent: the header task that completes the
    # chord is the body's parent.
    body_options = {key: value for key, value in options.items() if key != "parent_id"}
    if context.root_id is not None:
        body_options.setdefault("root_id", context.root_id)
    body["options"] = _merge(body["options"], body_options)
    group_id = header["options"].get("task_id") or context.new_id()
    header["options"]["task_id"] = group_id
    body_node = _freeze(body, context, task_id=task_id, group_id=group_id)
    members = _group_members(header)
    if not members:
        _apply(body, [[]], {}, {}, context)
        body_node.parent = GroupNode(group_id, [])
        return body_node
    header_call = {
        key: value
        for key, value in options.items()
        if key not in ("chain", "chord", "group_id", "group_index")
    }
    header_call.update(header_delay, task_id=group_id, chord=body)
    start = ChordStart(group_id, sum(chord_size(m) for m in members), body, [])
    context.chords.append(start)
    header_node = _apply_group(header, args, kwargs, header_call, context)
    start.header = header_node.children
    # Celery's chord.run: the result it returns (the body's last task's) has the header
    # for its parent, even when the body is a chain (whose links its freeze had made).
    body_node.parent = header_node
    return body_node


def _chord_header(sig: SignatureDict) -> SignatureDict:
    header = sig["kwargs"]["header"]
    if isinstance(header, list):
        header = sig["kwargs"]["header"] = group_dict(header)
    return header  # type: ignore[no-any-return]


def _chunks_to_group(sig: SignatureDict) -> None:
    """Turn a ``chunks`` signature, in place, into the group of starmaps it is sent as."""
    task, items, size = sig["kwargs"]["task"], sig["kwargs"]["it"], sig["kwargs"]["n"]
    parts = [
        xstarmap_dict(copy.deepcopy(task), items[at : at + size])
        for at in range(0, len(items), size)
    ]
    group = group_dict(parts, **sig["options"])
    sig.clear()
    sig.update(group)


def _freeze(
    sig: SignatureDict,
    context: _Context,
    *,
    task_id: str | None = None,
    group_id: str | None = None,
    chord: SignatureDict | None = None,
    group_index: int | None = None,
) -> ResultNode:
    """Assign ``sig``'s ids in place (Celery's ``freeze``) and return its result tree.

    ``task_id``, ``group_id``, ``chord`` and ``group_index`` go to the task whose result is
    the signature's: a chain's last step, a chord's body (a group keeps ``task_id`` as its
    own id and gives the others to each member)."""
    if sig["subtask_type"] == "chunks":
        _chunks_to_group(sig)
    freezer = _FREEZERS.get(sig["subtask_type"], _freeze_task)
    return freezer(sig, context, task_id, group_id, chord, group_index)


def _freeze_task(
    sig: SignatureDict,
    context: _Context,
    task_id: str | None,
    group_id: str | None,
    chord: SignatureDict | None,
    group_index: int | None,
) -> ResultNode:
    options = sig["options"]
    tid = options.get("task_id") or task_id or context.new_id()
    options["task_id"] = tid
    if context.reply_to and "reply_to" not in options:
        options["reply_to"] = context.reply_to
    if group_id and "group_id" not in options:
        options["group_id"] = group_id
    if chord:
        options["chord"] = chord
    if group_index is not None:
        options["group_index"] = group_index
    return TaskNode(tid)


def _freeze_group(
    sig: SignatureDict,
    context: _Context,
    task_id: str | None,
    group_id: str | None,
    chord: SignatureDict | None,
    group_index: int | None,
) -> ResultNode:
    options = sig["options"]
    gid = options.get("task_id") or task_id or context.new_id()
    options["task_id"] = gid
    if group_id:
        options["group_id"] = group_id
    if chord:
        options["chord"] = chord
    if group_index is not None:
        options["group_index"] = group_index
    children = [
        _freeze(member, context, group_id=group_id, chord=chord, group_index=index)
        for index, member in enumerate(_group_members(sig))
    ]
    return GroupNode(gid, children)


def _freeze_chain(
    sig: SignatureDict,
    context: _Context,
    task_id: str | None,
    group_id: str | None,
    chord: SignatureDict | None,
    group_index: int | None,
) -> ResultNode:
    tasks = sig["kwargs"]["tasks"]
    if not tasks:
        raise CanvasError(f"a chain needs at least one task: {short(sig)}")
    previous: ResultNode | None = None
    for step in tasks[:-1]:
        node = _freeze(step, context)
        if previous is not None:
            _first_of(node).parent = previous
        previous = node
    last = _freeze(
        tasks[-1], context, task_id=task_id, group_id=group_id, chord=chord,
        group_index=group_index,
    )  # fmt: skip
    if previous is not None:
        _first_of(last).parent = previous
    sig["options"]["task_id"] = last.id
    return last


def _freeze_chord(
    sig: SignatureDict,
    context: _Context,
    task_id: str | None,
    group_id: str | None,
    chord: SignatureDict | None,
    group_index: int | None,
) -> ResultNode:
    header_node = _freeze(_chord_header(sig), context)
    sig["options"]["task_id"] = header_node.id
    body_node = _freeze(
        sig["kwargs"]["body"], context, task_id=task_id, group_id=group_id, chord=chord,
        group_index=group_index,
    )  # fmt: skip
    _first_of(body_node).parent = header_node
    return body_node


_FREEZERS = {"group": _freeze_group, "chain": _freeze_chain, "chord": _freeze_chord}


def _first_of(node: ResultNode) -> ResultNode:
    """The earliest result ``node`` follows (a chain's first step), to link it to what
    runs before it."""
    while node.parent is not None:
        node = node.parent
    return node


def _unlink(node: ResultNode, target: ResultNode) -> None:
    """Cut the link from ``node``'s line of parents to ``target``."""
    while node.parent is not None and node.parent is not target:
        node = node.parent
    if node.parent is target:
        node.parent = None


def _link(sig: SignatureDict, callback: SignatureDict) -> None:
    """Add a success callback as Celery's ``sig.link`` does for each kind."""
    subtask_type = sig["subtask_type"]
    if subtask_type == "chord":
        _link(sig["kwargs"]["body"], callback)
    elif subtask_type == "group" and sig["kwargs"]["tasks"]:
        _link(sig["kwargs"]["tasks"][0], {**copy.deepcopy(callback), "immutable": True})
    else:
        _append_option(sig, "link", callback)


def _link_error(sig: SignatureDict, errback: SignatureDict) -> None:
    """Add an error callback as Celery's ``sig.link_error`` does for each kind."""
    subtask_type = sig["subtask_type"]
    if subtask_type == "chord":
        _link_error(sig["kwargs"]["body"], errback)
    elif subtask_type == "group":
        for member in sig["kwargs"]["tasks"]:
            _link_error(member, copy.deepcopy(errback))
    else:
        _append_option(sig, "link_error", errback)


def _append_option(sig: SignatureDict, key: str, value: SignatureDict) -> None:
    items = _as_list(sig["options"].get(key)) or []
    if value not in items:
        items.append(value)
    sig["options"][key] = items
