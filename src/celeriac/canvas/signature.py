"""``Signature``: a task call to make later, as Celery's ``add.s(2, 2)``, and the functions
that make one (:func:`signature`, :func:`maybe_signature`).

A signature *is* its dict in Celery's form (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``), so ``json.dumps(sig)`` is what Celery writes and
:meth:`Signature.from_dict` rebuilds the right class from ``subtask_type``. Chains, groups,
chords, maps and chunks are subclasses (:mod:`celeriac.canvas.composites`); applying any of
them goes through ``protocol.canvas.apply`` and :mod:`celeriac.canvas.publish`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast, overload

from celeriac import _bridge, _state, sending
from celeriac.canvas.publish import publish, publish_soon
from celeriac.canvas.results import result_of, sent
from celeriac.errors import CanvasError, NotRegistered
from celeriac.protocol import canvas

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.result import AsyncResult, GroupResult
    from celeriac.task import Task


def check_options(options: Mapping[str, object]) -> None:
    """Raise TypeError for an ``apply_async`` option no canvas acts on (Celery's
    ``routing_key``, ``retry_policy``, ``shadow``...): accepted, it would be ignored."""
    if "task_id" in options:
        options = {key: value for key, value in options.items() if key != "task_id"}
    sending.check_options(options, canvas=True)
    for name in ("link", "link_error", "chain", "chord"):
        value = options.get(name)
        if value is None:
            continue
        listed = [value] if isinstance(value, Mapping) and name != "chain" else value
        if name == "chord" and not isinstance(value, Mapping):
            listed = None
        if not isinstance(listed, list | tuple) or not all(
            isinstance(item, Mapping) for item in listed
        ):
            what = "a signature" if name == "chord" else "a signature or a list of signatures"
            if name == "chain":
                what = "a list of signatures"
            raise TypeError(
                f"option {name!r} must be {what} (such as add.s(2)), as Celery's canvas"
                f" takes it; got {value!r}"
            )


class Signature(dict[str, Any]):
    """One task call, to apply later or to compose: ``add.s(2, 2)``, ``signature("add")``.

    ``args`` and ``kwargs`` given when it is applied are added to its own (arguments in
    front), unless it is immutable (``add.si(2, 2)``). ``options`` are ``apply_async``'s.
    ``sig | other`` chains. Methods that publish (``apply_async``, ``delay``) return a result
    at once in async code, to be awaited to confirm the publish, and block in sync code,
    as ``Task.apply_async`` does.
    """

    #: Each ``subtask_type`` and its class, for :meth:`from_dict`.
    TYPES: ClassVar[dict[str | None, type[Signature]]] = {}
    _app: Celery | None
    _type: Task[Any, Any] | None

    def __init_subclass__(cls, subtask_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if subtask_type is not None:
            Signature.TYPES[subtask_type] = cls

    def __init__(
        self,
        task: str | Task[Any, Any] | Mapping[str, Any] | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        type: Task[Any, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celery | None = None,
        **ex: Any,
    ) -> None:
        self._app = app
        self._type = type
        if isinstance(task, Mapping):
            super().__init__(_filled(task))
            self._adopt()
            return
        if task is not None and not isinstance(task, str):
            self._type = task
            task = task.name
        super().__init__(
            task=task,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **ex},
            subtask_type=subtask_type,
            immutable=immutable,
        )
        self._adopt()

    def _adopt(self) -> None:
        """Turn the signature dicts inside this one into signatures (composites)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Celery | None = None) -> Signature:
        """The signature a dict in Celery's form stands for, of the class its
        ``subtask_type`` names (a chain's dict gives a chain)."""
        subtask_type = d.get("subtask_type")
        target = Signature.TYPES.get(subtask_type)
        if target is None:
            raise CanvasError(f"unknown subtask_type {subtask_type!r} in signature {d!r}")
        sig = dict.__new__(target)
        sig._app, sig._type = app, None
        dict.update(sig, _filled(d))
        sig._adopt()
        return sig

    # -- the dict's fields ---------------------------------------------------------------

    @property
    def task(self) -> str:
        """The task's name."""
        return cast(str, self["task"])

    name = task

    @property
    def args(self) -> list[Any]:
        return cast(list[Any], self["args"])

    @args.setter
    def args(self, value: Sequence[Any]) -> None:
        self["args"] = list(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        return cast(dict[str, Any], self["kwargs"])

    @kwargs.setter
    def kwargs(self, value: Mapping[str, Any]) -> None:
        self["kwargs"] = dict(value)

    @property
    def options(self) -> dict[str, Any]:
        return cast(dict[str, Any], self["options"])

    @options.setter
    def options(self, value: Mapping[str, Any]) -> None:
        self["options"] = dict(value)

    @property
    def subtask_type(self) -> str | None:
        return cast("str | None", self["subtask_type"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def id(self) -> str | None:
        """The task id it is frozen with (``freeze()``, or ``set(task_id=...)``), or None."""
        return cast("str | None", self.options.get("task_id"))

    @id.setter
    def id(self, value: str) -> None:
        self.options["task_id"] = value

    @property
    def app(self) -> Celery:
        """The app it is applied through: the one given, its task's, else the current app."""
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        nested = self._nested_app()
        return nested if nested is not None else _state.get_current_app()

    @app.setter
    def app(self, app: Celery) -> None:
        self._app = app

    def _nested_app(self) -> Celery | None:
        """The app of a signature inside this one, for a composite made without one."""
        return None

    @property
    def type(self) -> Task[Any, Any]:
        """The registered task of this name (the one it was made from, if any)."""
        if self._type is not None:
            return self._type
        task = self.app.tasks.get(self.task)
        if task is None:
            raise NotRegistered(f"no task named {self.task!r} is registered in {self.app!r}")
        return task

    # -- changing it -----------------------------------------------------------------------

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set ``apply_async`` options on this signature (and immutability); returns it."""
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> Signature:
        """A copy, with ``args`` put in front of its own and ``kwargs`` and ``opts`` merged
        in (an immutable signature keeps its arguments; a ``group_id`` it has is kept)."""
        copied = copy.deepcopy(self)
        if not copied.immutable:
            if args:
                copied.args = [*args, *copied.args]
            if kwargs:
                copied.kwargs = {**copied.kwargs, **kwargs}
        for key, value in opts.items():
            if not (key == "group_id" and key in copied.options):
                copied.options[key] = value
        return copied

    partial = clone

    def replace(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Signature:
        """A copy with these ``args``, ``kwargs`` or ``options`` instead of its own."""
        copied = copy.deepcopy(self)
        if args is not None:
            copied.args = args
        if kwargs is not None:
            copied.kwargs = kwargs
        if options is not None:
            copied.options = options
        return copied

    def link(self, callback: Mapping[str, Any]) -> Signature:
        """Apply ``callback`` with this task's result once it succeeds; returns ``callback``."""
        return self.append_to_list_option("link", maybe_signature(callback))

    def link_error(self, errback: Mapping[str, Any]) -> Signature:
        """Apply ``errback`` if this task fails; returns ``errback``."""
        return self.append_to_list_option("link_error", maybe_signature(errback))

    def on_error(self, errback: Mapping[str, Any]) -> Signature:
        """:meth:`link_error`, returning this signature (to chain calls)."""
        self.link_error(errback)
        return self

    def append_to_list_option(self, key: str, value: Signature) -> Signature:
        items = self.options.get(key)
        if items is None:
            items = self.options[key] = []
        elif isinstance(items, Mapping):
            items = self.options[key] = [items]
        if value not in items:
            items.append(value)
        return value

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AsyncResult[Any] | GroupResult:
        """Assign every id it will run under, in place (applying it later uses them), and
        return its result: a chain's last task's (parents linked), a group's, a chord's
        body's."""
        frozen, node = canvas.freeze(
            dict(self),
            task_id=_id,
            group_id=group_id,
            group_index=group_index,
            chord=dict(chord) if chord is not None else None,
        )
        for key, value in (("root_id", root_id), ("parent_id", parent_id)):
            if value is not None:
                frozen["options"][key] = value
        self.clear()
        dict.update(self, frozen)
        self._adopt()
        return result_of(node, self.app)

    # -- applying it -------------------------------------------------------------------------

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        route_name: str | None = None,
        **options: Any,
    ) -> Any:
        """Publish it with these extra arguments and options (``apply_async``'s, plus
        ``link``, ``link_error``, ``task_id``...). Returns its result: in async code at once,
        the publish under way (``await`` it to confirm); in sync code once published.
        Under ``task_always_eager``, it runs here instead (see :meth:`apply`)."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return send(self, args, kwargs, options)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run it here and now, as ``Task.apply`` runs a task (see
        :mod:`celeriac.canvas.eager` for what runs inline)."""
        from celeriac.canvas import eager

        check_options(options)
        return eager.apply(self.app, self, args or (), kwargs or {}, options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function here with these arguments in front of its own."""
        merged_args = [*args, *self.args]
        merged_kwargs = {**self.kwargs, **kwargs}
        return cast(Any, self.type)(*merged_args, **merged_kwargs)

    # -- composing it ------------------------------------------------------------------------

    # ``|`` composes canvases (Celery's meaning), it does not merge dicts.
    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        from celeriac.canvas.composites import _chain, group, maybe_unroll_group

        if isinstance(other, _chain):
            return _chain(self, *other.unchain_tasks(), app=self._app)
        if isinstance(other, group):
            return _chain(self, maybe_unroll_group(other), app=self._app)
        if isinstance(other, Signature):
            return _chain(self, other, app=self._app)
        return NotImplemented

    def __ror__(self, other: object) -> Signature:  # type: ignore[override]
        # Declared so that ``sig | group(...)`` reads as Signature.__or__ to the type
        # checker, not as dict's reflected merge (it never merges dicts).
        return NotImplemented

    # -- copying, pickling, printing -----------------------------------------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        copied = Signature.from_dict(copy.deepcopy(dict(self), memo), app=self._app)
        copied._type = self._type
        return copied

    def __reduce__(self) -> tuple[Any, ...]:
        return signature_from_dict, (dict(self),)

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args]
        arguments += [f"{key}={value!r}" for key, value in self.kwargs.items()]
        mark = "%" if self.immutable else ""
        return f"{mark}{self.task}({', '.join(arguments)})"


def send(
    sig: Signature,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> AsyncResult[Any] | GroupResult:
    """Publish ``sig`` (never run inline: ``send_task``'s way); its result, awaitable in
    async code until published."""
    check_options(options)
    app = sig.app
    expansion = canvas.apply(sig, args or (), kwargs, **options)
    result = result_of(expansion.result, app)
    if not _bridge.in_async_context():
        _bridge.run(publish(app, expansion))
        return result
    return sent(result, publish_soon(app, expansion))


def _filled(d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a signature dict with Celery's defaults for the keys it lacks."""
    filled = dict(d)
    filled["args"] = list(d.get("args") or ())
    filled["kwargs"] = dict(d.get("kwargs") or {})
    filled["options"] = dict(d.get("options") or {})
    filled.setdefault("subtask_type", None)
    filled.setdefault("immutable", False)
    return filled


Signature.TYPES[None] = Signature


def signature_from_dict(d: Mapping[str, Any]) -> Signature:
    """:meth:`Signature.from_dict` (what a pickled signature is rebuilt with)."""
    return Signature.from_dict(d)


def signature(
    varies: str | Task[Any, Any] | Mapping[str, Any],
    *args: Any,
    app: Celery | None = None,
    **kwargs: Any,
) -> Signature:
    """A signature from a task name (``signature("proj.add", args=(2, 2))``), a task, or a
    signature dict (a copy of a signature)."""
    if isinstance(varies, Signature):
        copied = varies.clone()
        if app is not None:
            copied.app = app
        return copied
    if isinstance(varies, Mapping):
        return Signature.from_dict(varies, app=app)
    return Signature(varies, *args, app=app, **kwargs)  # type: ignore[misc]


subtask = signature


@overload
def maybe_signature(d: None, app: Celery | None = None, clone: bool = False) -> None: ...
@overload
def maybe_signature(
    d: Mapping[str, Any], app: Celery | None = None, clone: bool = False
) -> Signature: ...
def maybe_signature(
    d: Mapping[str, Any] | None, app: Celery | None = None, clone: bool = False
) -> Signature | None:
    """``d`` as a signature: a dict becomes one, a signature is kept (copied with
    ``clone``), None stays None."""
    if d is None:
        return None
    if isinstance(d, Signature):
        sig = d.clone() if clone else d
    elif isinstance(d, Mapping):
        sig = Signature.from_dict(d)
    else:
        raise TypeError(f"expected a signature or a signature dict, got {d!r}")
    if app is not None:
        sig.app = app
    return sig


def signatures(items: Iterable[Any], app: Celery | None = None) -> list[Signature]:
    """Each of ``items`` as a signature (a list of signature dicts from a message)."""
    return [maybe_signature(item, app) for item in items]


# Last: the composites subclass Signature and register their subtask_type.
from celeriac.canvas import composites as _composites  # noqa: E402, F401
