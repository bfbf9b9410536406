"""The remote-control commands a worker answers, by name, as Celery's ``Panel`` registers
them: ``inspect`` ones report, ``control`` ones act. :mod:`celeriac.worker.inspect` and
:mod:`celeriac.worker.control` define them; :mod:`celeriac.worker.mailbox` runs them.

A command is called with the worker's :class:`ControlContext` and the request's
``arguments`` as keyword arguments (Celery's names, unknown ones ignored, as Celery's
handlers take ``**kwargs``), and returns the reply value (JSON data). What it raises is
replied as ``{"error": repr(exc)}``, as Celery's mailbox does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from celeriac.protocol.clock import LamportClock

if TYPE_CHECKING:
    from celeriac.connections import Connection
    from celeriac.worker.worker import Worker

Kind = Literal["inspect", "control"]
Handler = Callable[..., Any]


@dataclass(slots=True)
class ControlContext:
    """What a command may read and act on: the worker, its connection and clock."""

    worker: Worker
    conn: Connection
    clock: LamportClock
    #: Unix time the worker started answering.
    started_at: float = field(default_factory=time.time)

    @property
    def hostname(self) -> str:
        return self.worker.hostname


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its name, whether it reports or acts, what it does, and its help."""

    name: str
    kind: Kind
    handler: Handler
    help: str

    async def run(self, context: ControlContext, arguments: dict[str, Any]) -> Any:
        """The reply value; the arguments the handler does not take are left out."""
        accepted = _parameters(self.handler)
        given = {k: v for k, v in arguments.items() if accepted is None or k in accepted}
        value = self.handler(context, **given)
        if inspect.isawaitable(value):
            value = await value
        return value


#: Every command, by name (aliases included).
COMMANDS: dict[str, Command] = {}


def command(
    kind: Kind, name: str | None = None, *, aliases: tuple[str, ...] = ()
) -> Callable[[Handler], Handler]:
    """Register the decorated function as a command (its name by default)."""

    def register(handler: Handler) -> Handler:
        doc = (handler.__doc__ or "").strip().split("\n\n")[0]
        entry = Command(name or handler.__name__, kind, handler, " ".join(doc.split()))
        for key in (entry.name, *aliases):
            COMMANDS[key] = entry
        return handler

    return register


def _parameters(handler: Handler) -> frozenset[str] | None:
    """The keyword arguments ``handler`` takes after the context; None: any (``**kwargs``)."""
    parameters = list(inspect.signature(handler).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


class _NoReply:
    """What a command returns when it must not be answered (``shutdown``, as Celery's)."""

    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY: Any = _NoReply()
