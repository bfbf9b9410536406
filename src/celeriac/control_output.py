"""What ``celeriac inspect`` and ``celeriac control`` send and print, in the shapes of
Celery's ``celery inspect`` / ``celery control``: the same positional arguments per
command, and the same ``->  node: OK`` lines, so scripts written against Celery's output
read celeriac's.

The command table mirrors the ``args``/``variadic`` metadata of Celery's worker commands:
positional words are converted in order to the named arguments, and a command with a
variadic name takes the rest as a list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pprint import pformat
from typing import Any

#: Celery's exit status when no worker answered (``EX_UNAVAILABLE``).
EX_UNAVAILABLE = 69
NO_REPLY = "No nodes replied within time constraint"

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def _boolean(text: str) -> bool:
    """A yes/no word as Celery's ``strtobool`` reads it."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, yes/no, 1/0)")


@dataclass(frozen=True)
class CommandShape:
    """A remote-control command's positional arguments: ``args`` in order (name and
    converter), then ``variadic``, the name the remaining words go to as a list."""

    signature: str = ""
    args: tuple[tuple[str, Callable[[str], Any]], ...] = field(default=())
    variadic: str | None = None


INSPECT_COMMANDS: dict[str, CommandShape] = {
    "active": CommandShape(),
    "active_queues": CommandShape(),
    "clock": CommandShape(),
    "conf": CommandShape("[include_defaults=False]", (("with_defaults", _boolean),)),
    "ping": CommandShape(),
    "query_task": CommandShape("[id1 [id2 [... [idN]]]]", variadic="ids"),
    "registered": CommandShape("[attr1 [attr2 [... [attrN]]]]", variadic="taskinfoitems"),
    "report": CommandShape(),
    "reserved": CommandShape(),
    "revoked": CommandShape(),
    "scheduled": CommandShape(),
    "stats": CommandShape(),
}

CONTROL_COMMANDS: dict[str, CommandShape] = {
    "add_consumer": CommandShape(
        "<queue> [exchange [type [routing_key]]]",
        (("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
    ),
    "cancel_consumer": CommandShape("<queue>", (("queue", str),)),
    "disable_events": CommandShape(),
    "enable_events": CommandShape(),
    "heartbeat": CommandShape(),
    "pool_grow": CommandShape("[N=1]", (("n", int),)),
    "pool_shrink": CommandShape("[N=1]", (("n", int),)),
    "rate_limit": CommandShape(
        "<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>",
        (("task_name", str), ("rate_limit", str)),
    ),
    "revoke": CommandShape("[id1 [id2 [... [idN]]]]", variadic="task_id"),
    "shutdown": CommandShape(),
    "terminate": CommandShape(
        "<signal> [id1 [id2 [... [idN]]]]", (("signal", str),), variadic="task_id"
    ),
    "time_limit": CommandShape(
        "<task_name> <soft_secs> [hard_secs]",
        (("task_name", str), ("soft", float), ("hard", float)),
    ),
}

COMMANDS = {"inspect": INSPECT_COMMANDS, "control": CONTROL_COMMANDS}


class UsageError(ValueError):
    """The command line named an unknown command or gave it words it cannot take."""


def command_arguments(kind: str, command: str, words: Sequence[str]) -> dict[str, Any]:
    """The arguments ``command`` is sent with, from the words after its name."""
    table = COMMANDS[kind]
    shape = table.get(command)
    if shape is None:
        raise UsageError(
            f"{kind} command {command!r} not recognized; the {kind} commands are:"
            f" {', '.join(sorted(table))}"
        )
    if len(words) > len(shape.args) and shape.variadic is None:
        takes = f"arguments: {shape.signature}" if shape.signature else "no arguments"
        raise UsageError(f"{kind} {command} takes {takes}")
    arguments: dict[str, Any] = {}
    for (name, convert), word in zip(shape.args, words, strict=False):
        try:
            arguments[name] = convert(word)
        except ValueError as exc:
            raise UsageError(f"{kind} {command} {shape.signature}: {name}: {exc}") from exc
    if shape.variadic is not None:
        arguments[shape.variadic] = list(words[len(shape.args) :])
    return arguments


def listing(kind: str) -> str:
    """Each command of ``kind`` with its arguments, one a line (for the help)."""
    return "\n".join(
        f"  {name} {shape.signature}".rstrip() for name, shape in sorted(COMMANDS[kind].items())
    )


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.split("\n"))


def pretty(value: Any) -> tuple[str, str]:
    """A reply's status (OK or ERROR) and its text, as Celery's command line shows them."""
    if isinstance(value, list):
        return "OK", "\n".join(f"* {item}" for item in value) if value else "- empty -"
    if isinstance(value, dict):
        if "ok" in value:
            return "OK", _indent(pretty(value["ok"])[1], 4)
        if "error" in value:
            return "ERROR", _indent(pretty(value["error"])[1], 4)
        return "OK", json.dumps(value, sort_keys=True, indent=4, default=repr)
    if isinstance(value, str):
        return "OK", value
    return "OK", pformat(value)


def reply_text(node: str, value: Any) -> str:
    """``->  node: OK`` and the value indented beneath it."""
    status, text = pretty(value)
    return f"->  {node}: {status}\n{_indent(text, 4)}"


def nodes_online(count: int) -> str:
    return f"{count} {'node' if count == 1 else 'nodes'} online."


def report(replies: Sequence[dict[str, Any]], *, as_json: bool, kind: str) -> str:
    """What ``celeriac <kind> ...`` prints for ``replies`` (each ``{node: value}``, in the
    order they came), as Celery's command does: with JSON, ``inspect`` prints one object of
    every node and ``control`` the list of replies; without, each reply, and after
    ``inspect``'s a blank line and the count of nodes (Celery's ``control`` prints none)."""
    if as_json:
        combined: Any = replies
        if kind == "inspect":
            combined = {node: value for reply in replies for node, value in reply.items()}
        return json.dumps(combined, default=repr)
    blocks = [reply_text(node, value) for reply in replies for node, value in reply.items()]
    if kind != "inspect":
        return "\n".join(blocks)
    nodes = {node for reply in replies for node in reply}
    return "\n".join(blocks) + "\n\n" + nodes_online(len(nodes))
