"""Celery's result record format: build it in the worker, read it in the client.

Exceptions travel as ``{"exc_type", "exc_message", "exc_module"}`` with ``exc_message`` the
exception's args as a list, exactly as Celery stores them, so Celery clients read our
failures and we read theirs.
"""

from __future__ import annotations

import builtins
import sys
from datetime import UTC, datetime
from typing import Any

from celeriac import errors, states
from celeriac.errors import RemoteTaskError

Meta = dict[str, Any]

#: celeriac's versions of the exceptions Celery itself raises, stored under Celery's module
#: (billiard's, for the time limits) so that ``except celery.exceptions.TaskRevokedError``
#: works in a Celery client, and read back as celeriac's whichever side stored them.
_CELERY_MODULES: dict[type[BaseException], str] = {
    errors.TaskRevokedError: "celery.exceptions",
    errors.MaxRetriesExceededError: "celery.exceptions",
    errors.NotRegistered: "celery.exceptions",
    errors.ChordError: "celery.exceptions",
    errors.SoftTimeLimitExceeded: "billiard.exceptions",
    errors.TimeLimitExceeded: "billiard.exceptions",
}
_FROM_CELERY: dict[tuple[str, str], type[BaseException]] = {
    (module, cls.__qualname__): cls for cls, module in _CELERY_MODULES.items()
}


def make_meta(
    task_id: str,
    status: str,
    result: Any,
    *,
    traceback: str | None = None,
    parent_id: str | None = None,
    group_id: str | None = None,
    children: list[Any] | None = None,
) -> Meta:
    """The record Celery stores for ``status``; ``date_done`` is set for ready states only.
    ``children`` are the results the task published, each in Celery's ``as_tuple()`` form
    (``[[id, parent], None]`` for a task): a chain's next step, a ``link`` callback."""
    meta: Meta = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": children if children is not None else [],
        "date_done": datetime.now(UTC).isoformat() if status in states.READY_STATES else None,
        "task_id": task_id,
    }
    if group_id is not None:
        meta["group_id"] = group_id
    if parent_id is not None:
        meta["parent_id"] = parent_id
    return meta


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    module = _CELERY_MODULES.get(type(exc)) or type(exc).__module__
    return {
        "exc_type": type(exc).__qualname__,
        "exc_message": [_jsonable(a) for a in exc.args],
        "exc_module": module,
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def exception_from_dict(data: Any, traceback: str | None) -> BaseException:
    """Rebuild the task's exception when its type can be had safely, else RemoteTaskError.

    Safe means: a builtin, or a class of a module this process has already imported (a
    result never makes us import code), that is an exception and accepts the stored args.
    The remote traceback is attached as a note either way.
    """
    if not isinstance(data, dict):
        return RemoteTaskError("Exception", None, [data], traceback)
    exc_type = str(data.get("exc_type", "Exception"))
    module_name = data.get("exc_module")
    raw_args = data.get("exc_message", [])
    args = list(raw_args) if isinstance(raw_args, list | tuple) else [raw_args]
    exc = _instantiate(module_name, exc_type, args)
    if exc is None:
        return RemoteTaskError(
            exc_type, module_name if isinstance(module_name, str) else None, args, traceback
        )
    if traceback:
        exc.add_note("Remote traceback:\n" + traceback.rstrip())
    return exc


def _instantiate(module_name: Any, qualname: str, args: list[Any]) -> BaseException | None:
    known = _FROM_CELERY.get((module_name, qualname)) if isinstance(module_name, str) else None
    if known is not None:
        try:
            return known(*args)
        except Exception:
            return None
    if module_name in (None, "builtins"):
        owner: Any = builtins
    elif isinstance(module_name, str) and module_name in sys.modules:
        owner = sys.modules[module_name]
    else:
        return None
    cls: Any = owner
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            return None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return None
    if issubclass(cls, KeyboardInterrupt | SystemExit | GeneratorExit):
        return None
    try:
        return cls(*args)
    except Exception:
        return None
