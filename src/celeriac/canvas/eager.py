"""Canvases run here and now: ``sig.apply()``, and ``apply_async`` under ``task_always_eager``.

Each task runs through ``Task.apply`` (so ``self.request``, retries and
``task_eager_propagates`` behave as for one task): a chain passes each result to the next
task, a group runs its tasks in turn, a chord gives its body the header's results, a map
or starmap calls its task for each item, chunks run as their group of starmaps, and a
task's ``link`` callbacks are applied with its result. Error callbacks (``link_error``) are
not called. As in Celery, a task that fails inside a chain or a chord's header raises here
(its result is needed by the next step).

A plain signature of an ``async def`` task applied from async code starts as an asyncio
task (await its result), as ``Task.apply`` does. A chain, group or chord needs each result
at once, so there such a task is an error that says so: run those canvases from sync code
or on a worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac import sending, states
from celeriac.errors import CanvasError, NotRegistered
from celeriac.ids import uuid
from celeriac.protocol import canvas
from celeriac.result import AsyncResult, EagerResult, GroupResult

if TYPE_CHECKING:
    from celeriac.app import Celery

Result = AsyncResult[Any] | GroupResult


def apply(
    app: Celery,
    sig: Mapping[str, Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
) -> Result:
    """Run ``sig`` with these extra arguments and options here; its result."""
    checked = canvas.check(sig, "signature")
    options = {key: value for key, value in options.items() if value is not None}
    return _Runner(app).run(checked, list(args), dict(kwargs), options, top=True)


class _Runner:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def run(
        self,
        sig: canvas.SignatureDict,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        top: bool = False,
    ) -> Result:
        subtask_type = sig["subtask_type"]
        if subtask_type == "chain":
            return self.chain(sig, args, kwargs, options)
        if subtask_type == "group":
            return self.group(sig, args, kwargs, options)
        if subtask_type == "chord":
            return self.chord(sig, args, kwargs, options)
        if subtask_type == "chunks":
            return self.group(_chunks_group(sig), args, kwargs, options)
        if subtask_type in ("xmap", "xstarmap"):
            return self.map(sig, options)
        return self.task(sig, args, kwargs, options, top=top)

    def task(
        self,
        sig: canvas.SignatureDict,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        *,
        top: bool = False,
    ) -> Result:
        merged = {**sig["options"], **options}
        if not sig["immutable"]:
            args, kwargs = [*args, *sig["args"]], {**sig["kwargs"], **kwargs}
        else:
            args, kwargs = list(sig["args"]), dict(sig["kwargs"])
        task = self.app.tasks.get(sig["task"])
        if task is None:
            raise NotRegistered(f"no task named {sig['task']!r} is registered in {self.app!r}")
        send = {key: merged[key] for key in sending.OPTION_NAMES if merged.get(key) is not None}
        result = task.apply(args, kwargs, task_id=merged.get("task_id"), **send)
        if top and result.state == states.STARTED:
            return result  # an async task in async code: awaited by the caller
        value = _value(result, sig, propagate=False)
        if result.state == states.SUCCESS:
            for callback in _listed(merged.get("link")):
                self.run(canvas.check(callback, "link"), [value], {}, {})
        return result

    def chain(
        self,
        sig: canvas.SignatureDict,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        tasks = sig["kwargs"]["tasks"]
        if not tasks:
            raise CanvasError("a chain needs at least one task")
        own = {**sig["options"], **options}
        if not sig["immutable"]:
            args = [*args, *sig["args"]]
        last: Result | None = None
        for index, step in enumerate(tasks):
            is_last = index == len(tasks) - 1
            step_options = {"task_id": own["task_id"]} if is_last and own.get("task_id") else {}
            if last is None:
                result = self.run(step, args, kwargs, step_options)
            else:
                result = self.run(step, [_value(last, step, propagate=True)], {}, step_options)
            result.parent = last
            last = result
        for callback in _listed(own.get("link")):
            assert last is not None
            self.run(canvas.check(callback, "link"), [_value(last, sig, propagate=True)], {}, {})
        assert last is not None
        return last

    def group(
        self,
        sig: canvas.SignatureDict,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> GroupResult:
        own = {**sig["options"], **options}
        members = [self.run(member, args, kwargs, {}) for member in sig["kwargs"]["tasks"]]
        return GroupResult(own.get("task_id") or uuid(), members, app=self.app)

    def chord(
        self,
        sig: canvas.SignatureDict,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        own = {**sig["options"], **options}
        header = sig["kwargs"]["header"]
        if isinstance(header, list):
            header = canvas.group_dict(header)
        header_result = self.group(header, args, kwargs, {})
        values = _value(header_result, header, propagate=True)
        body_options = {"task_id": own["task_id"]} if own.get("task_id") else {}
        result = self.run(sig["kwargs"]["body"], [values], {}, body_options)
        result.parent = header_result
        return result

    def map(self, sig: canvas.SignatureDict, options: dict[str, Any]) -> Result:
        own = {**sig["options"], **options}
        task = sig["kwargs"]["task"]
        star = sig["subtask_type"] == "xstarmap"
        values = []
        for item in sig["kwargs"]["it"]:
            args = list(item) if star else [item]
            values.append(_value(self.run(task, args, {}, {}), task, propagate=True))
        result: EagerResult[Any] = EagerResult(
            own.get("task_id") or uuid(), self.app, task_name=sig["task"]
        )
        result.finish(states.SUCCESS, values)
        return result


def _value(result: Result, sig: Mapping[str, Any], *, propagate: bool) -> Any:
    """What ``result`` holds now: a task's value (its exception raised when it failed and
    ``propagate``), a group's list of values."""
    if isinstance(result, GroupResult):
        return [_value(member, sig, propagate=propagate) for member in result.results]
    if result.state == states.STARTED:
        raise CanvasError(
            f"task {sig.get('task')!r} is an async def task applied from async code: a"
            " chain, group or chord cannot run it inline there, since the next step needs"
            " its result at once. Apply the canvas from sync code, or on a worker"
        )
    if result.state == states.FAILURE and propagate:
        raise result.result
    return result.result


def _chunks_group(sig: canvas.SignatureDict) -> canvas.SignatureDict:
    task, items, size = sig["kwargs"]["task"], sig["kwargs"]["it"], sig["kwargs"]["n"]
    parts = [canvas.xstarmap_dict(task, items[at : at + size]) for at in range(0, len(items), size)]
    return canvas.group_dict(parts, **sig["options"])


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, Mapping) else list(value)
