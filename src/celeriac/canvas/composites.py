"""Celery's composite signatures: ``chain``, ``group``, ``chord``, ``xmap``, ``xstarmap``
and ``chunks``. Each is a :class:`~celeriac.canvas.signature.Signature` whose dict is the
one ``protocol.canvas`` builds (``chain_dict``, ``group_dict``...), members included.

``|`` composes as Celery 5.7 does: ``a | b`` is a chain, ``group | b`` a chord, a chain
ending in a group followed by a task turns that group into a chord, a chord followed by a
task takes the task into its body.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from functools import reduce
from types import GeneratorType
from typing import TYPE_CHECKING, Any, cast

from celeriac.canvas.signature import Signature, maybe_signature, signatures
from celeriac.errors import CanvasError

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.result import GroupResult


def _steps(tasks: tuple[Any, ...]) -> list[Any]:
    """``f(a, b)``, ``f([a, b])`` and ``f(generator)`` alike: the tasks as a list."""
    if len(tasks) == 1 and isinstance(tasks[0], list | tuple | GeneratorType):
        return list(tasks[0])
    return list(tasks)


class _Tasks(Signature):
    """A signature whose kwargs hold a list of signatures, ``tasks`` (a chain, a group)."""

    #: Its ``subtask_type``, also its task's name after ``celery.``.
    kind: str

    def __init__(self, *tasks: Any, app: Celery | None = None, **options: Any) -> None:
        kind = self.kind
        members = {"tasks": signatures(_steps(tasks))}
        Signature.__init__(self, f"celery.{kind}", (), members, options, subtask_type=kind, app=app)

    def _adopt(self) -> None:
        self.kwargs["tasks"] = signatures(self.kwargs.get("tasks") or [])

    def _nested_app(self) -> Celery | None:
        return self.tasks[0].app if self.tasks else None

    @property
    def tasks(self) -> list[Signature]:
        return cast(list[Signature], self.kwargs["tasks"])

    @tasks.setter
    def tasks(self, tasks: Iterable[Any]) -> None:
        self.kwargs["tasks"] = signatures(tasks)


class _chain(_Tasks, subtask_type="chain"):
    """A chain as it is stored: its tasks in running order, each given the previous one's
    result. Made by ``|`` and by :class:`chain`."""

    kind = "chain"

    def unchain_tasks(self) -> list[Signature]:
        """Copies of its tasks carrying its ``link`` (the last) and ``link_error`` (each)."""
        tasks = [task.clone() for task in self.tasks]
        for callback in _listed(self.options.get("link")):
            tasks[-1].link(callback)
        for errback in _listed(self.options.get("link_error")):
            for task in tasks:
                task.link_error(errback)
        return tasks

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        if isinstance(other, group):
            other = maybe_unroll_group(other)
            if not isinstance(other, group):
                return self | other
            tasks = self.unchain_tasks()
            if not tasks:
                return other
            last = tasks[-1]
            if isinstance(last, chord):
                last.body = last.body | other
                return _chain(tasks, app=self._app)
            return _chain([*tasks, other], app=self._app)
        if isinstance(other, _chain):
            return reduce(operator.or_, other.unchain_tasks(), cast(Signature, self))
        if isinstance(other, Signature):
            if self.tasks and isinstance(self.tasks[-1], group):
                sig = cast(_chain, self.clone())
                sig.tasks[-1] = chord(sig.tasks[-1], other, app=self._app)
                if len(sig.tasks) > 1 and isinstance(sig.tasks[-2], chord):
                    sig.tasks[-2].body = sig.tasks[-2].body | sig.tasks[-1]
                    sig.tasks = sig.tasks[:-1]
                return sig
            if self.tasks and isinstance(self.tasks[-1], chord):
                sig = cast(_chain, self.clone())
                last = cast(chord, sig.tasks[-1])
                last.body = last.body | other
                return sig
            return _chain([*self.unchain_tasks(), other], app=self._app)
        return NotImplemented

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Apply the chain with these arguments for its first task."""
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks) or "chain()"


class chain(_chain):
    """``chain(a, b, c)`` (or ``chain([a, b, c])``): ``a | b | c``, each task given the
    previous one's result. As in Celery, the tasks are composed with ``|``, so a chain of
    a single group is that group, and a group followed by a task becomes a chord."""

    def __new__(cls, *tasks: Any, **options: Any) -> chain:
        if not options and tasks and (len(tasks) != 1 or isinstance(tasks[0], list | tuple)):
            composed = reduce(operator.or_, _steps(tasks), cast(Signature, _chain()))
            return cast(chain, composed)  # a _chain, group or chord: __init__ is not run
        return super().__new__(cls)


class group(_Tasks, subtask_type="group"):
    """``group(a, b)`` (or a list or generator of signatures): the tasks run in parallel;
    its result is a :class:`~celeriac.result.GroupResult`."""

    kind = "group"

    def link(self, callback: Mapping[str, Any]) -> Signature:
        """Celery's: the callback goes, immutable, on the first task (a chord is the way to
        run a task after all of them)."""
        sig = maybe_signature(callback).clone().set(immutable=True)
        return self.tasks[0].link(sig) if self.tasks else sig

    def link_error(self, errback: Mapping[str, Any]) -> Signature:
        """The errback goes on each task."""
        sig = maybe_signature(errback)
        for task in self.tasks:
            task.link_error(sig.clone())
        return sig

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        route_name: str | None = None,
        **options: Any,
    ) -> Any:
        """Publish every task; returns the :class:`~celeriac.result.GroupResult`."""
        if options.get("link") is not None:
            raise TypeError("Cannot add link to group: use a chord")
        if options.get("link_error") is not None:
            raise TypeError("Cannot add link to group: do that on individual tasks")
        return super().apply_async(args, kwargs, route_name, **options)

    def freeze(self, *args: Any, **kwargs: Any) -> GroupResult:
        return cast("GroupResult", super().freeze(*args, **kwargs))

    def __call__(self, *args: Any, **options: Any) -> Any:
        """Apply the group with these arguments in front of each task's own."""
        return self.apply_async(args, **options)

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        if isinstance(other, Signature):
            return chord(self, body=other, app=self._app)
        return NotImplemented

    def __len__(self) -> int:  # a dict's length is its keys': Celery counts the tasks
        return len(self.tasks)

    def __iter__(self) -> Any:  # Celery iterates the tasks, not the dict's keys
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(task) for task in self.tasks)}])"


class chord(Signature, subtask_type="chord"):
    """``chord(header, body)``: the header group's tasks run in parallel, then the body gets
    the list of their results. ``chord(header)(body)`` applies it. Its result is the
    body's, whose ``parent`` is the header's ``GroupResult``. Needs a result store that
    joins chords (Redis, SQLite, memory): on others it is refused before anything is sent."""

    def __init__(
        self,
        header: Any = None,
        body: Mapping[str, Any] | None = None,
        task: str = "celery.chord",
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Celery | None = None,
        **options: Any,
    ) -> None:
        inner = dict((kwargs or {}).get("kwargs") or {})
        Signature.__init__(
            self,
            task,
            args or (),
            {"kwargs": inner, "header": _header_tasks(header), "body": maybe_signature(body)},
            options,
            subtask_type="chord",
            app=app,
        )

    def _adopt(self) -> None:
        header = self.kwargs.get("header")
        # A frozen chord's header is a group dict (its id in its options): kept as a group.
        if isinstance(header, Mapping):
            self.kwargs["header"] = maybe_signature(header)
        else:
            self.kwargs["header"] = signatures(header or [])
        self.kwargs["body"] = maybe_signature(self.kwargs.get("body"))

    def _nested_app(self) -> Celery | None:
        if self.body is not None:
            return self.body.app
        tasks = list(self.tasks)
        return tasks[0].app if tasks else None

    @property
    def tasks(self) -> list[Signature] | group:
        """The header: a list of signatures as Celery keeps it (a group once frozen)."""
        return cast("list[Signature] | group", self.kwargs["header"])

    header = tasks

    @property
    def body(self) -> Signature:
        return cast(Signature, self.kwargs["body"])

    @body.setter
    def body(self, body: Mapping[str, Any]) -> None:
        self.kwargs["body"] = maybe_signature(body)

    def link(self, callback: Mapping[str, Any]) -> Signature:
        """The callback goes on the body."""
        return self.body.link(callback)

    def link_error(self, errback: Mapping[str, Any]) -> Signature:
        """The errback goes on the body."""
        return self.body.link_error(errback)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        route_name: str | None = None,
        **options: Any,
    ) -> Any:
        """Publish the header's tasks (the store learns the chord's size first); returns
        the body's result, its ``parent`` the header's ``GroupResult``."""
        kwargs = dict(kwargs or {})
        body = kwargs.pop("body", None)
        sig: chord = self
        if body is not None:
            sig = cast(chord, self.clone())
            sig.body = body
        if sig.body is None:
            raise CanvasError("a chord needs a body: chord(header, body) or chord(header)(body)")
        return Signature.apply_async(sig, args, kwargs, route_name, **options)

    def __call__(self, body: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """``chord(header)(body)``: apply the chord with this body."""
        return self.apply_async((), {"body": body} if body is not None else {}, **options)

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        if isinstance(other, Signature) and not isinstance(other, group | _chain):
            sig = cast(chord, self.clone())
            sig.body = sig.body | other
            return sig
        if isinstance(other, group) and len(other.tasks) == 1:
            sig = cast(chord, self.clone())
            sig.body = sig.body | maybe_unroll_group(other)
            return sig
        return super().__or__(other)

    def __repr__(self) -> str:
        return f"chord({self.tasks!r}, {self.body!r})"


_Group = group


class _basemap(Signature):
    """``xmap``/``xstarmap``: one message whose task calls ``task`` for each item."""

    _task_name = ""
    _subtask_type = ""

    def __init__(
        self, task: Mapping[str, Any], it: Iterable[Any], app: Celery | None = None, **options: Any
    ) -> None:
        Signature.__init__(
            self,
            self._task_name,
            (),
            {"task": maybe_signature(task), "it": self._items(it)},
            options,
            subtask_type=self._subtask_type,
            immutable=True,
            app=app,
        )

    @staticmethod
    def _items(it: Iterable[Any]) -> list[Any]:
        return list(it)

    def _adopt(self) -> None:
        self.kwargs["task"] = maybe_signature(self.kwargs.get("task"))

    def _nested_app(self) -> Celery | None:
        task = self.kwargs.get("task")
        return task.app if isinstance(task, Signature) else None

    def __repr__(self) -> str:
        return f"[{self.kwargs['task'].task}(x) for x in {self.kwargs['it']!r}]"


class xmap(_basemap, subtask_type="xmap"):
    """``task.map(it)``: one ``celery.map`` message, ``[task(item) for item in it]``."""

    _task_name = "celery.map"
    _subtask_type = "xmap"


class xstarmap(_basemap, subtask_type="xstarmap"):
    """``task.starmap(it)``: one ``celery.starmap`` message, ``[task(*item) ...]``."""

    _task_name = "celery.starmap"
    _subtask_type = "xstarmap"

    @staticmethod
    def _items(it: Iterable[Any]) -> list[Any]:
        return [list(item) for item in it]


class chunks(Signature, subtask_type="chunks"):
    """``task.chunks(it, n)``: the items in chunks of ``n``, each chunk one
    ``celery.starmap`` message; sent as the group :meth:`group` gives."""

    def __init__(
        self,
        task: Mapping[str, Any],
        it: Iterable[Any],
        n: int,
        app: Celery | None = None,
        **options: Any,
    ) -> None:
        kwargs = {"task": maybe_signature(task), "it": [list(item) for item in it], "n": n}
        Signature.__init__(
            self, "celery.chunks", (), kwargs, options, subtask_type="chunks", immutable=True,
            app=app,
        )  # fmt: skip

    def _adopt(self) -> None:
        self.kwargs["task"] = maybe_signature(self.kwargs.get("task"))

    def _nested_app(self) -> Celery | None:
        task = self.kwargs.get("task")
        return task.app if isinstance(task, Signature) else None

    def group(self) -> _Group:
        """The group it is sent as: one ``xstarmap`` per chunk of ``n`` items."""
        task, items, size = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [xstarmap(task.clone(), items[at : at + size]) for at in range(0, len(items), size)]
        return _Group(parts, app=self._app, **self.options)

    def freeze(self, *args: Any, **kwargs: Any) -> Any:
        """Chunks are applied as a group: this freezes :meth:`group`'s copy, not itself
        (apply that group to publish under these ids)."""
        return self.group().freeze(*args, **kwargs)

    def __call__(self, **options: Any) -> Any:
        return self.apply_async(**options)


def maybe_unroll_group(sig: group) -> Signature:
    """A group of one task is that task (Celery unrolls it when composing)."""
    tasks = sig.tasks
    return tasks[0].clone() if len(tasks) == 1 else sig


def _header_tasks(header: Any) -> list[Signature] | None:
    """A chord's header as Celery's ``chord()`` keeps it: a list of signatures (a group's
    or a chain's tasks, a signature alone in a list)."""
    if header is None:
        return None
    if isinstance(header, Mapping):
        header = maybe_signature(header)
        if isinstance(header, group | _chain):
            return list(header.tasks)
        return [header]
    return signatures(header)


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, Mapping) else list(value)
