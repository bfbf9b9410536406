"""What applying a signature asks of a publisher: the messages (:class:`TaskCall`), the
chords whose size the result store must know first (:class:`ChordStart`), and the ids of
what was applied (a tree of :class:`TaskNode` and :class:`GroupNode`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celeriac.protocol.canvas.signatures import (
    MESSAGE_OPTION_NAMES,
    SEND_OPTION_NAMES,
    SignatureDict,
)

# -- what applying publishes --------------------------------------------------------------


@dataclass(slots=True)
class TaskNode:
    """The id of one task applied, and the result it follows (a chain's previous step)."""

    id: str
    parent: ResultNode | None = None


@dataclass(slots=True)
class GroupNode:
    """A group's id and its members' results, in ``group_index`` order."""

    id: str
    children: list[ResultNode]
    parent: ResultNode | None = None


ResultNode = TaskNode | GroupNode


@dataclass(slots=True)
class TaskCall:
    """One message to publish.

    ``options`` holds every name of :data:`MESSAGE_OPTION_NAMES` (``None`` when unset), which
    ``build_task_message`` takes as they are, and the signature's ``SendOptions`` that are set
    (:data:`SEND_OPTION_NAMES`: queue, priority, countdown, eta...), for the publisher's plan.
    """

    task: str
    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]

    def message_options(self) -> dict[str, Any]:
        """The canvas keyword arguments of ``build_task_message`` (an unset ``reply_to`` left
        out: the publisher has its own default)."""
        found = {name: self.options[name] for name in MESSAGE_OPTION_NAMES}
        if found["reply_to"] is None:
            del found["reply_to"]
        return found

    def send_options(self) -> dict[str, Any]:
        """The options that are ``sending.SendOptions``."""
        return {key: value for key, value in self.options.items() if key in SEND_OPTION_NAMES}


@dataclass(slots=True)
class ChordStart:
    """A chord whose header is published by this expansion.

    Before its header messages go out, the result store must learn the chord's ``size``
    (Redis: ``celery-taskset-meta-<group_id>.s``), or, on a store without a native join, a
    ``celery.chord_unlock`` task must be published for it: ``header`` gives the results it
    polls (a chain in the header is its last step, a chord its body).
    """

    group_id: str
    size: int
    body: SignatureDict
    header: list[ResultNode]

    @property
    def header_ids(self) -> list[str]:
        """The ids of the header's results, in ``group_index`` order."""
        return [node.id for node in self.header]


@dataclass(slots=True)
class Expansion:
    """Everything one :func:`apply` asks of a publisher."""

    calls: list[TaskCall]
    """The messages, in publish order."""
    chords: list[ChordStart]
    """Chords to set up before any of ``calls`` is published."""
    result: ResultNode
    """The ids of what was applied: a task's, a group's, a chain's last step's (its
    ``parent`` links go back to the first step) or a chord's body's (whose root parent is
    the header group)."""


def result_tuple(node: ResultNode) -> list[Any]:
    """A result tree in Celery's ``as_tuple()`` form, as JSON carries it: a task is
    ``[[id, <parent>], null]``, a group ``[[id, <parent>], [<member>, ...]]``. Celery's
    ``chord_unlock`` and ``GroupResult.restore`` read this form."""
    parent = result_tuple(node.parent) if node.parent is not None else None
    if isinstance(node, GroupNode):
        return [[node.id, parent], [result_tuple(child) for child in node.children]]
    return [[node.id, parent], None]
