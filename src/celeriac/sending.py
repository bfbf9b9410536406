"""Turning calls into task messages: what ``send_task`` and ``send_many`` share.

The options of one send call (queue, priority, countdown, limits, the calling task as
parent) are worked out once, in :func:`plan`; each message then only adds its id and its
arguments (:func:`build`). A batch of ten thousand pays for the options once, not ten
thousand times.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, Unpack

from celeriac import _state
from celeriac.config import Settings
from celeriac.protocol import message as protocol
from celeriac.protocol.envelope import Envelope


@dataclass(slots=True)
class Plan:
    """What every message of one send call has in common."""

    name: str
    queue: str
    priority: int
    eta: datetime | None
    expires: datetime | None
    serializer: str
    time_limit: float | None
    soft_time_limit: float | None
    root_id: str | None
    parent_id: str | None
    ignore_result: bool
    headers: Mapping[str, Any] | None

    @property
    def visible_at(self) -> float | None:
        """The ETA in unix seconds, as brokers take it."""
        return self.eta.timestamp() if self.eta is not None else None


class SendOptions(TypedDict, total=False):
    """Celery's ``apply_async`` options, as ``send_task``, ``send_many``, ``apply_async`` and
    ``apply_many`` take them (``task_id`` aside, which only a single message can have)."""

    countdown: float | None
    eta: datetime | None
    expires: float | datetime | None
    queue: str | None
    priority: int | None
    headers: Mapping[str, Any] | None
    ignore_result: bool | None
    serializer: str | None
    time_limit: float | None
    soft_time_limit: float | None


#: The option names ``SendOptions`` lists: what a send call accepts besides ``task_id``.
OPTION_NAMES = frozenset(SendOptions.__optional_keys__)


class CanvasOptions(SendOptions, total=False):
    """``SendOptions`` and Celery's canvas options, as ``apply_async``, ``send_task`` and
    signatures take them: ``link``/``link_error`` callbacks (a signature or a list of
    them), the ``chain`` still to run, the ``chord`` the task is part of, its group, and the
    ids of the task that sends it."""

    link: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    link_error: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    chain: Sequence[Mapping[str, Any]] | None
    chord: Mapping[str, Any] | None
    group_id: str | None
    group_index: int | None
    parent_id: str | None
    root_id: str | None
    reply_to: str | None


#: Celery's canvas options: a call that gives one goes through a signature
#: (``celeriac.canvas``); a send call of many messages takes none.
CANVAS_OPTION_NAMES = frozenset(CanvasOptions.__optional_keys__) - OPTION_NAMES


def check_options(options: Mapping[str, object], *, canvas: bool = False) -> None:
    """Raise TypeError naming the first option celeriac does not support: one accepted and
    ignored would leave the caller believing its callback, route or policy is in place.
    ``canvas``: the call also takes :data:`CANVAS_OPTION_NAMES`."""
    if OPTION_NAMES.issuperset(options):
        return
    unknown = set(options) - OPTION_NAMES
    if canvas:
        unknown -= CANVAS_OPTION_NAMES
        if not unknown:
            return
    name = sorted(unknown)[0]
    if name in CANVAS_OPTION_NAMES:
        why = (
            "a canvas option applies to one task: give it to apply_async, send_task or a"
            " signature (add.s(2, 2).apply_async(link=...)), not to a call that sends many"
        )
    else:
        why = "celeriac does not support it"
    names = OPTION_NAMES | CANVAS_OPTION_NAMES if canvas else OPTION_NAMES
    supported = ", ".join(["task_id", *sorted(names)])
    raise TypeError(f"unsupported task option {name!r}: {why}. The options are: {supported}")


def plan(
    conf: Settings, name: str, *, now: datetime | None = None, **options: Unpack[SendOptions]
) -> Plan:
    """Celery's defaults and conversions for one send call (``countdown`` becomes an ETA,
    numeric ``expires`` counts from ``now``, a naive ``eta`` is UTC). An option that is not
    one of ``SendOptions`` is a TypeError (see :func:`check_options`). ``now`` (default: the
    clock) lets the messages of one canvas share one ETA for one countdown, so that they
    are published as one batch."""
    check_options(options)
    now = now or datetime.now(UTC)
    eta = options.get("eta")
    countdown = options.get("countdown")
    if countdown is not None:
        eta = now + timedelta(seconds=countdown)
    elif eta is not None and eta.tzinfo is None:
        eta = eta.replace(tzinfo=UTC)
    expires = options.get("expires")
    if isinstance(expires, int | float):
        expires = now + timedelta(seconds=expires)
    priority = options.get("priority")
    ignore_result = options.get("ignore_result")
    parent = _state.current_request.get()
    return Plan(
        name=name,
        queue=options.get("queue") or conf.task_default_queue,
        priority=priority if priority is not None else conf.task_default_priority or 0,
        eta=eta,
        expires=expires,
        serializer=options.get("serializer") or conf.task_serializer,
        time_limit=options.get("time_limit"),
        soft_time_limit=options.get("soft_time_limit"),
        root_id=(parent.root_id or parent.id) if parent and parent.id else None,
        parent_id=parent.id if parent and parent.id else None,
        ignore_result=bool(ignore_result if ignore_result is not None else conf.task_ignore_result),
        headers=options.get("headers"),
    )


def build(
    plan: Plan, task_id: str, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> Envelope:
    """The message of one call under ``plan``."""
    return protocol.build_task_message(
        plan.name, task_id, args or (), dict(kwargs or {}), **message_options(plan)
    )


def build_many(plan: Plan, task_ids: Sequence[str], calls: Sequence[object]) -> list[Envelope]:
    """The messages of ``send_many``'s calls under ``plan``, one per id; a call that is
    not a tuple of arguments or a dict of keyword arguments raises (see :func:`arguments`)."""
    split = [
        (task_id, *arguments(call, index))
        for index, (task_id, call) in enumerate(zip(task_ids, calls, strict=True))
    ]
    return protocol.build_task_messages(plan.name, split, **message_options(plan))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a batch is built.

    A batch allocates a few containers per message and keeps them all, so the collector
    runs again and again as the heap grows, and each full pass walks every message built so
    far: a quarter to a third of the cost of a 100,000-call batch. What a batch builds holds
    no cycles, so nothing is left for the collector to find once it resumes. A collector
    already disabled (by the application) is left as it is. The switch is process-wide: a
    thread that disables the collector while a batch is built finds it enabled after.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def message_options(plan: Plan) -> dict[str, Any]:
    """The keyword arguments of ``protocol.message.build_task_message`` that ``plan`` sets."""
    return {
        "serializer": plan.serializer,
        "eta": plan.eta,
        "expires": plan.expires,
        "time_limit": plan.time_limit,
        "soft_time_limit": plan.soft_time_limit,
        "root_id": plan.root_id,
        "parent_id": plan.parent_id,
        "ignore_result": plan.ignore_result,
        "priority": plan.priority,
        "headers": plan.headers,
    }


def arguments(call: object, index: int) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """One item of ``send_many``'s calls as (args, kwargs): a mapping is the keyword
    arguments, a tuple or list the positional ones."""
    if isinstance(call, tuple | list):  # first: a Mapping check costs an ABC look-up
        return call, {}
    if isinstance(call, Mapping):
        return (), call
    raise TypeError(
        f"call {index} is a {type(call).__name__}, not a tuple of positional arguments or a"
        f" dict of keyword arguments: write ({call!r},) to pass it as the only argument"
    )
