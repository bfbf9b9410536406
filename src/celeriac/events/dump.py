"""``celeriac events --dump``: one line per event, in the layout of ``celery events --dump``,
so what reads one reads the other:

    w1@host [2026-11-21 11:22:12.062520+00:00] started: active=0, freq=2.0, ...
    w1@host [2026-11-21 11:22:12.1+00:00] task received: add(<id>) args=(2, 3) kwargs={} eta=...

A worker event shows its humanized type and its other fields sorted by name; a task event
its type, the task as ``name(uuid) args=... kwargs=...`` (remembered from its
``task-received`` or ``task-sent``), then its other fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from celeriac.errors import BrokerError
from celeriac.events.receiver import EventReceiver

if TYPE_CHECKING:
    from celeriac.app import Celery

logger = logging.getLogger("celeriac.events")

#: How worker events read (Celery's).
HUMAN_TYPES = {
    "worker-offline": "shutdown",
    "worker-online": "started",
    "worker-heartbeat": "heartbeat",
}
#: Task descriptions remembered for later events of the same task, at most.
MAX_REMEMBERED = 4095
#: Waiting between attempts to reach the broker again.
RECONNECT_FIRST, RECONNECT_CAP = 1.0, 10.0


def humanize_type(type: str) -> str:
    return HUMAN_TYPES.get(type.lower(), type.lower().replace("-", " "))


class Dumper:
    """Formats events one line each, remembering each task's description by uuid."""

    def __init__(self) -> None:
        self._tasks: OrderedDict[str, str] = OrderedDict()

    def line(self, event: dict[str, Any]) -> str:
        fields = dict(event)
        stamp = fields.pop("timestamp", None)
        when = datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else stamp
        type = str(fields.pop("type", "")).lower()
        hostname = fields.pop("hostname", None)
        task = None
        if type.startswith("task-"):
            uuid = str(fields.pop("uuid", ""))
            if type in ("task-received", "task-sent"):
                task = (
                    f"{fields.pop('name', None)}({uuid}) args={fields.pop('args', None)}"
                    f" kwargs={fields.pop('kwargs', None)}"
                )
                self._remember(uuid, task)
            else:
                task = self._tasks.get(uuid, "")
        listed = ", ".join(f"{key}={fields[key]}" for key in sorted(fields))
        sep = ":" if listed else ""
        head = f"{hostname} [{when}] {humanize_type(type)}{sep}"
        return f"{head} {task} {listed}" if task is not None else f"{head} {listed}"

    def _remember(self, uuid: str, task: str) -> None:
        self._tasks[uuid] = task
        self._tasks.move_to_end(uuid)
        while len(self._tasks) > MAX_REMEMBERED:
            self._tasks.popitem(last=False)


def say(out: TextIO, text: str) -> None:
    print(text, file=out)
    with contextlib.suppress(AttributeError, ValueError):
        out.flush()  # the output may be piped


async def dump(app: Celery, out: TextIO) -> None:
    """Print every event as it comes until cancelled; a lost broker is reached again."""
    dumper = Dumper()
    say(out, "-> celeriac events: starting capture...")
    delay = RECONNECT_FIRST
    while True:
        try:
            async with EventReceiver(app) as receiver:
                delay = RECONNECT_FIRST
                async for event in receiver:
                    say(out, dumper.line(event))
            return
        except BrokerError as exc:
            say(out, f"-> Cannot reach the broker: {exc}. Trying again in {delay:g} s")
            await asyncio.sleep(delay)
            delay = min(RECONNECT_CAP, delay * 2)
