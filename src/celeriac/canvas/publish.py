"""Publishing what applying a canvas asks for (a ``protocol.canvas.Expansion``).

The client (``chain(...).apply_async()``) and the worker (a chain's next step, callbacks, a
chord's body) both end here, so both check chords, set up their joins and batch messages the
same way. Order matters: a chord the result store cannot join is refused before anything is
published, and every chord's size is in the store before any of its header messages is
(WAVE2 §1.8: a header task that ends before the size is known would never complete it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from celeriac import sending
from celeriac.connections import Connection, publish_in_chunks
from celeriac.errors import ChordsNotSupported
from celeriac.protocol.canvas import ChordStart, Expansion, TaskCall
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.message import build_task_message
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.sending import SendOptions

#: Celery's words when a chord is applied on ``rpc://`` (``NotImplementedError`` there too).
RPC_CHORDS = 'The "rpc" result backend does not support chords!'


@dataclass(slots=True)
class Batch:
    """Consecutive messages that go to one queue with one priority and ETA: one
    ``publish_in_chunks`` call, so a group of 10,000 is a few round trips."""

    queue: str
    priority: int
    eta: float | None
    envelopes: list[Envelope] = field(default_factory=list)


async def publish(
    app: Celery,
    expansion: Expansion,
    *,
    conn: Connection | None = None,
    from_wire: bool = False,
) -> None:
    """Publish ``expansion``: refuse chords the result store cannot join, tell it the size
    of every chord, then publish the messages in order, batched. ``conn`` defaults to the
    app's connection on this loop (a worker passes its own).

    Priorities in signature dicts are the wire's (see ``Broker.priority_to_wire``: on
    Redis, Celery's lower-first numbers), so that a step a Celery worker publishes and one
    celeriac publishes run at the same urgency. ``from_wire``: the expansion was applied
    from signatures a message carried (a worker continuing a canvas), so the priorities of
    its calls are read from the wire's numbers; otherwise (a client's canvas) the
    priorities of the signatures its messages carry are written in them.
    """
    if conn is None:
        conn = await app.connection()
    check_chords(conn.backend, expansion)
    batches = build(
        app,
        expansion.calls,
        reply_to=conn.backend.reply_to,
        priorities=_FromWire(conn.broker) if from_wire else _ToWire(conn.broker),
    )
    await start_chords(app, conn.backend, expansion.chords)
    await send(conn, batches)


def check_chords(backend: ResultBackend, expansion: Expansion) -> None:
    """Raise :class:`~celeriac.errors.ChordsNotSupported` when ``expansion`` starts a chord,
    or carries one in a chain to be run later, and ``backend`` cannot join chords."""
    if backend.joins_chords or not (expansion.chords or _chains_a_chord(expansion.calls)):
        return
    if backend.url.partition(":")[0] == "rpc":
        error = ChordsNotSupported(RPC_CHORDS)
        error.add_note("Use a Redis or SQLite result backend to run chords.")
        raise error
    raise ChordsNotSupported(str(backend.no_groups("join a chord")))


def _chains_a_chord(calls: Sequence[TaskCall]) -> bool:
    """Whether a later step of a chain these calls start is a chord (Celery refuses those
    up front too, rather than when the step before it ends)."""
    pending: list[Any] = []
    for call in calls:
        pending.extend(call.options.get("chain") or ())
    while pending:
        sig = pending.pop()
        if not isinstance(sig, Mapping):
            continue
        if sig.get("subtask_type") == "chord":
            return True
        if sig.get("subtask_type") in ("chain", "group"):
            pending.extend((sig.get("kwargs") or {}).get("tasks") or ())
    return False


async def start_chords(app: Celery, backend: ResultBackend, chords: Sequence[ChordStart]) -> None:
    """Tell the store each chord's size, before any header message exists."""
    for chord in chords:
        await backend.chord_start(chord.group_id, chord.size, expires=app.conf.result_expires)


def build(
    app: Celery,
    calls: Sequence[TaskCall],
    *,
    reply_to: str | None = None,
    priorities: Priorities | None = None,
) -> list[Batch]:
    """The messages of ``calls``, in order, in batches of the same queue, priority and ETA.

    Each message takes the options of the registered task of its name (queue, priority,
    serializer, limits, ``ignore_result``) where the call sets none, as ``apply_async``
    does. ``reply_to`` is the publisher's reply queue (``rpc://``): it goes in every task
    signature these messages carry with an id of its own and no reply queue, as Celery
    freezes them, so a chain's later steps report to the caller. ``priorities`` translates
    them between celeriac's numbers and the wire's (see :func:`publish`). Raises, with
    nothing published, for a message that cannot be built (arguments the serializer
    refuses...).
    """
    tasks = app.tasks if calls else {}
    now = datetime.now(UTC)  # one ETA per countdown: a group with one is still one batch
    batches: list[Batch] = []
    with sending.collector_paused():
        for call in calls:
            options = call.send_options()
            if priorities is not None and options.get("priority") is not None:
                options["priority"] = priorities.of_call(options["priority"])
            task = tasks.get(call.task)
            if task is not None:
                options = dict(task.with_defaults(cast("SendOptions", options)))
            plan = sending.plan(app.conf, call.task, now=now, **options)
            envelope = build_message(plan, call, reply_to, priorities)
            last = batches[-1] if batches else None
            if last is None or (last.queue, last.priority, last.eta) != (
                plan.queue,
                plan.priority,
                plan.visible_at,
            ):
                last = Batch(plan.queue, plan.priority, plan.visible_at)
                batches.append(last)
            last.envelopes.append(envelope)
    return batches


def build_message(
    plan: sending.Plan,
    call: TaskCall,
    reply_to: str | None = None,
    priorities: Priorities | None = None,
) -> Envelope:
    """One call's message: ``plan``'s options, with the call's canvas options where set."""
    options = sending.message_options(plan)
    for key, value in call.message_options().items():
        if value is not None:
            options[key] = value
    if priorities is not None:
        for key in ("chain", "callbacks", "errbacks", "chord"):
            if options.get(key) is not None:
                options[key] = priorities.in_signatures(options[key])
    if reply_to:
        for key in ("chain", "callbacks", "errbacks"):
            for sig in options.get(key) or ():
                _address(sig, reply_to)
        if options.get("chord") is not None:
            _address(options["chord"], reply_to)
    return build_task_message(call.task, call.id, call.args, call.kwargs, **options)


async def send(conn: Connection, batches: Sequence[Batch]) -> None:
    """Publish ``batches`` in order (``publish_in_chunks`` names the reply queue of
    ``rpc://`` in each message that has none)."""
    for batch in batches:
        await publish_in_chunks(conn, batch.envelopes, batch.queue, batch.priority, batch.eta)


def _address(sig: Mapping[str, Any], reply_to: str) -> None:
    """Name ``reply_to`` in every frozen task signature inside ``sig`` that names none."""
    pending: list[Any] = [sig]
    while pending:
        item = pending.pop()
        if not isinstance(item, Mapping):
            continue
        options = item.get("options")
        if isinstance(options, dict):
            frozen_task = item.get("subtask_type") is None and options.get("task_id")
            if frozen_task and not options.get("reply_to"):
                options["reply_to"] = reply_to
            for key in ("chain", "chord"):
                nested = options.get(key)
                pending.extend(nested if isinstance(nested, list) else [nested])
        kwargs = item.get("kwargs")
        if item.get("subtask_type") is not None and isinstance(kwargs, Mapping):
            for key in ("tasks", "header", "body", "task"):
                nested = kwargs.get(key)
                pending.extend(nested if isinstance(nested, list) else [nested])


def publish_soon(app: Celery, expansion: Expansion) -> asyncio.Task[None]:
    """:func:`publish` for async code that cannot wait: the messages are built here (so a
    bad argument raises in the caller) and published by a task the app holds until it ends
    (``app.close()`` waits for it), as ``send_task`` does. Await the task to confirm."""
    conn = app.current_connection()
    if conn is not None:
        check_chords(conn.backend, expansion)
    batches = build(app, expansion.calls, reply_to=conn.backend.reply_to if conn else None)

    async def publishing() -> None:
        nonlocal batches
        current = conn or await app.connection()
        if conn is None:
            check_chords(current.backend, expansion)
            if current.backend.reply_to:  # rpc://: its reply queue is known only now
                batches = build(app, expansion.calls, reply_to=current.backend.reply_to)
        await start_chords(app, current.backend, expansion.chords)
        await send(current, batches)

    task = asyncio.get_running_loop().create_task(publishing())
    app.hold(task)
    return task


class Priorities:
    """How one publish translates priorities between celeriac's numbers and the wire's."""

    def of_call(self, priority: int) -> int:
        """A message's priority, as the broker takes it (celeriac's numbers)."""
        return priority

    def in_signatures(self, sigs: Any) -> Any:
        """The signatures a message carries, with their priorities as the wire means them."""
        return sigs


class _FromWire(Priorities):
    """A worker's publish: its signatures came from a message, their priorities are the
    wire's already; the messages made from them are given the broker's own numbers."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def of_call(self, priority: int) -> int:
        return self.broker.priority_from_wire(priority)


class _ToWire(Priorities):
    """A client's publish: its signatures hold celeriac's numbers, written into the
    messages as the wire's (copies: the caller's signatures stay as they are)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def in_signatures(self, sigs: Any) -> Any:
        return signatures_to_wire(self.broker, sigs)


def signatures_to_wire(broker: Broker, sigs: Any) -> Any:
    """Signatures (a dict or a list of them) with celeriac's priorities as ``broker``'s
    wire means them: copies, unless the numbers are the same."""
    if broker.priority_to_wire(0) == 0 and broker.priority_to_wire(9) == 9:
        return sigs  # the same numbers: nothing to copy
    return _with_priorities(sigs, broker.priority_to_wire)


def _with_priorities(sig: Any, convert: Callable[[int], int]) -> Any:
    """A copy of ``sig`` (a signature dict or a list of them) with every ``priority``
    option converted, in it and in the signatures nested in its options (``link``,
    ``link_error``, ``chain``, ``chord``) and kwargs (a chain's or group's ``tasks``, a
    chord's ``header`` and ``body``, a map's ``task``). Arguments are not copied."""
    if isinstance(sig, list):
        return [_with_priorities(item, convert) for item in sig]
    if not isinstance(sig, Mapping):
        return sig
    copied = dict(sig)
    options = sig.get("options")
    if isinstance(options, Mapping):
        options = dict(options)
        if isinstance(options.get("priority"), int):
            options["priority"] = convert(options["priority"])
        for key in ("link", "link_error", "chain", "chord"):
            if options.get(key) is not None:
                options[key] = _with_priorities(options[key], convert)
        copied["options"] = options
    kwargs = sig.get("kwargs")
    if sig.get("subtask_type") is not None and isinstance(kwargs, Mapping):
        kwargs = dict(kwargs)
        for key in ("tasks", "header", "body", "task"):
            if kwargs.get(key) is not None:
                kwargs[key] = _with_priorities(kwargs[key], convert)
        copied["kwargs"] = kwargs
    return copied
