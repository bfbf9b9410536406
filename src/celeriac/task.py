"""Task: what ``@app.task`` makes of a function. Publishing, inline calls, retry, state.

A task is ``Task[P, R]``: ``P`` the function's parameters (so ``add.delay(1, "x")`` is a
type error when ``add`` takes ints) and ``R`` its result (so ``await r.get()`` is ``R``).
``AsyncTask`` wraps an ``async def``, ``SyncTask`` a plain ``def``; both are ``Task``.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import random
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar, Unpack, cast

from celeriac import _bridge, _state, resources, sending, states
from celeriac._bridge import answer, dual
from celeriac.canvas import Signature, composites, signature
from celeriac.errors import CanvasError, MaxRetriesExceededError, Replace, Retry
from celeriac.ids import uuid
from celeriac.rates import Scope, check_rate_options
from celeriac.resources import injected_parameters
from celeriac.result import AsyncResult, EagerResult

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.sending import CanvasOptions, SendOptions

P = ParamSpec("P")
R = TypeVar("R")
#: Argument shapes a task remembers as fitting (see ``Task.check_arguments``).
_SHAPES_KEPT = 64


@dataclass(slots=True)
class Request:
    """What a running task knows about its own message (``self.request`` with ``bind=True``)."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    origin: str | None = None
    reply_to: str | None = None
    ignore_result: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    is_eager: bool = False
    #: Tells the worker's hooks of progress the task stored for itself (``update_state``):
    #: ``on_progress(request, state, info)``; None outside a worker or when no hook
    #: listens. Callable from the task's thread. (It takes the request rather than holding
    #: it: a request referring to itself would live until a garbage collection.)
    on_progress: Callable[[Request, str, Any], None] | None = None
    #: The message's canvas, as Celery's request has it (signature dicts from its embed):
    #: what ``self.replace(sig)`` hands on to the replacement.
    group_index: int | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    #: The chain's remaining steps, last first (the next one is ``chain[-1]``).
    chain: list[dict[str, Any]] | None = None
    #: The body of the chord this task is a header task of.
    chord: dict[str, Any] | None = None
    #: How many ``self.replace()`` calls this task stands in for (the message's header).
    replaced_task_nesting: int = 0


@dataclass(slots=True)
class TaskOptions:
    """The options ``@app.task(...)`` accepts, with Celery's names and meanings."""

    name: str
    bind: bool = False
    max_retries: int | None = None
    default_retry_delay: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    queue: str | None = None
    priority: int | None = None
    ignore_result: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    serializer: str | None = None
    #: Celery's ``rate_limit`` (``"10/m"``...: see :mod:`celeriac.rates`): starts allowed per
    #: worker process, or, with ``rate_limit_scope="global"``, across every worker sharing the
    #: result store, under ``rate_limit_key`` (the task's name by default), with bursts up to
    #: ``rate_limit_burst`` (the limit by default). None: ``task_annotations`` or
    #: ``task_default_rate_limit`` decide.
    rate_limit: str | float | None = None
    rate_limit_scope: Scope | None = None
    rate_limit_key: str | None = None
    rate_limit_burst: int | None = None

    def __post_init__(self) -> None:
        check_rate_options(
            f"task {self.name!r}",
            self.rate_limit,
            self.rate_limit_scope,
            self.rate_limit_key,
            self.rate_limit_burst,
        )


class Task(Generic[P, R]):
    """A registered task. Call it to run inline; ``delay``/``apply_async`` to queue it."""

    def __init__(self, app: Celery | None, fn: Callable[..., Any], options: TaskOptions) -> None:
        #: None for a ``@shared_task``: it uses the current app at each call.
        self._app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        signature = inspect.signature(fn)
        #: Parameters the worker fills with resources (their default is ``use(...)``).
        self.injected = injected_parameters(signature)
        params = [p for p in signature.parameters.values() if p.name not in self.injected]
        if options.bind:
            params = params[1:]
        #: What a message's args and kwargs must fit.
        self.call_signature = signature.replace(parameters=params)
        # Shapes (number of args, keyword names) known to fit: binding depends on nothing
        # else, and most tasks are sent with one or two shapes, so each is checked once.
        self._fitting: set[tuple[int, frozenset[str]]] = set()
        #: Runs on the event loop (``async def``, with or without ``yield``).
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        #: Yields progress (a generator or an async generator): see ``StreamingTask``.
        self.streams = inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @property
    def app(self) -> Celery:
        """The app this task sends through: its own, or for a ``@shared_task`` the current
        one (an error when no app exists, rather than a hidden default broker)."""
        if self._app is not None:
            return self._app
        return _state.get_current_app()

    # -- settings resolved against the app's configuration --------------------------------

    @property
    def max_retries(self) -> int | None:
        o = self.options
        return o.max_retries if o.max_retries is not None else self.app.conf.task_max_retries

    @property
    def default_retry_delay(self) -> float:
        delay = self.options.default_retry_delay
        return delay if delay is not None else self.app.conf.task_default_retry_delay

    @property
    def acks_late(self) -> bool:
        o = self.options
        return o.acks_late if o.acks_late is not None else self.app.conf.task_acks_late

    @property
    def ignore_result(self) -> bool:
        o = self.options
        return o.ignore_result if o.ignore_result is not None else self.app.conf.task_ignore_result

    @property
    def time_limit(self) -> float | None:
        return self.options.time_limit or self.app.conf.task_time_limit

    @property
    def soft_time_limit(self) -> float | None:
        return self.options.soft_time_limit or self.app.conf.task_soft_time_limit

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError unless a call with these arguments fits the task's parameters."""
        shape = (len(args), frozenset(kwargs))
        if shape not in self._fitting:
            self.call_signature.bind(*args, **kwargs)
            if len(self._fitting) < _SHAPES_KEPT:  # **kwargs tasks could see endless shapes
                self._fitting.add(shape)

    @property
    def request(self) -> Request:
        """The request of the task running in this context (an eager one when called inline)."""
        return _state.current_request.get() or Request(id="", task=self.name, is_eager=True)

    # -- running inline -------------------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function (with ``self`` first when bound, and this process's resources
        for the parameters that use them)."""
        for name, resource in self.injected.items():
            if name not in kwargs:
                kwargs[name] = resources.instance(resource, task=self.name)
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    # -- running eagerly --------------------------------------------------------------------

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        retries: int = 0,
        throw: bool | None = None,
        **options: Unpack[CanvasOptions],
    ) -> EagerResult[R]:
        """Run the task here and now, as Celery's ``apply`` does (for tests): no broker, no
        store. Returns an :class:`EagerResult`; a failure is its FAILURE state, or raised
        here when ``throw`` (default: the ``task_eager_propagates`` setting).

        ``self.request`` is an eager request with this id; ``self.retry()`` and
        ``autoretry_for`` run the task again at once (countdowns are not waited for) until
        ``max_retries``; progress it yields or stores with ``update_state`` is not kept.

        A plain ``def`` task runs in the caller. An ``async def`` task called from sync code
        runs to its end on the sync bridge's event loop; called from async code, it starts
        as an asyncio task at once and the result is awaited (``await task.apply(...)``, or
        ``await result.get()``), since blocking the caller's loop on it would deadlock.

        With a canvas option (``link=``...), it runs as ``self.signature(args, kwargs).apply()``
        (see :mod:`celeriac.canvas.eager`).
        """
        if options and not sending.OPTION_NAMES.issuperset(options):
            sending.check_options(options, canvas=True)
            sig = self.signature(args, kwargs)
            return cast(EagerResult[R], sig.apply(task_id=task_id, **options))
        throw = self.app.conf.task_eager_propagates if throw is None else throw
        result: EagerResult[R] = EagerResult(task_id or uuid(), self.app, task_name=self.name)
        call = EagerCall(self, result, list(args or ()), dict(kwargs or {}), retries, throw)
        if not self.is_async:
            call.run_sync()
        elif _bridge.in_async_context():
            running = asyncio.get_running_loop().create_task(call.run_async())
            result._sending = running
        else:
            _bridge.run(call.run_async())
        return result

    # -- publishing ---------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task with these arguments; ``await`` the result in async code."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        **options: Unpack[CanvasOptions],
    ) -> AsyncResult[R]:
        """Queue the task with Celery's options (see ``Celery.send_task``); under the
        ``task_always_eager`` setting, run it here instead (see :meth:`apply`).

        A canvas option (``link``, ``link_error``, ``chain``, ``chord``, ``group_id``,
        ``group_index``, ``parent_id``, ``root_id``, ``reply_to``) sends it as
        ``self.signature(args, kwargs).apply_async(**options)`` does (``send_task`` turns
        to the canvas only when its plain path refuses an option: none of it runs
        otherwise)."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, **options)
        return self.app.send_task(
            self.name, args, kwargs, task_id=task_id, **self.with_defaults(options)
        )

    def delay_many(
        self, calls: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> Awaitable[list[AsyncResult[R]]]:
        """Queue the task once per call, in as few round trips as the broker allows: each
        call a tuple of positional arguments or a dict of keyword arguments. Awaited in
        async code, blocking in sync code; the results come in the calls' order."""
        return self.apply_many(calls)

    def apply_many(
        self,
        calls: Iterable[Sequence[Any] | Mapping[str, Any]],
        **options: Unpack[SendOptions],
    ) -> Awaitable[list[AsyncResult[R]]]:
        """``delay_many`` with ``apply_async``'s options, the same for every message (see
        ``Celery.send_many``); under ``task_always_eager``, each call runs here instead."""
        if self.app.conf.task_always_eager:
            return self._apply_each(calls, options)
        return self.app.send_many(self.name, calls, **self.with_defaults(options))

    def _apply_each(
        self, calls: Iterable[Sequence[Any] | Mapping[str, Any]], options: SendOptions
    ) -> Awaitable[list[AsyncResult[R]]]:
        """``apply_many`` under ``task_always_eager``: ``apply`` for each call, in order."""
        split = [sending.arguments(call, index) for index, call in enumerate(calls)]
        results: list[AsyncResult[R]] = [self.apply(a, k, **options) for a, k in split]
        if not _bridge.in_async_context():
            return cast(Awaitable[list[AsyncResult[R]]], results)
        return _all_finished(results)

    def with_defaults(self, options: SendOptions) -> SendOptions:
        """The call's options, with this task's own where the call gives none."""
        own = self.options
        merged = options.copy()
        merged["queue"] = options.get("queue") or own.queue
        priority = options.get("priority")
        merged["priority"] = priority if priority is not None else own.priority
        ignore_result = options.get("ignore_result")
        merged["ignore_result"] = ignore_result if ignore_result is not None else self.ignore_result
        merged["serializer"] = options.get("serializer") or own.serializer
        merged["time_limit"] = options.get("time_limit") or own.time_limit
        merged["soft_time_limit"] = options.get("soft_time_limit") or own.soft_time_limit
        return merged

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        return AsyncResult(task_id, self.app, task_name=self.name)

    # -- signatures (Celery's canvas) --------------------------------------------------------

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A signature of this task: the call to make later, to compose or to send
        (``Signature(task, args, kwargs, options)``; ``immutable=True`` for ``si``)."""
        immutable = bool(options.pop("immutable", False))
        return Signature(self, args, kwargs, options, immutable=immutable, app=self._app)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """``add.s(2, 2)``: a signature whose task gets the previous result in front of
        these arguments in a chain."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """``add.si(2, 2)``: an immutable signature, which ignores the previous result."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Iterable[Any]) -> composites.xmap:
        """One ``celery.map`` message that calls this task for each item of ``it``."""
        return composites.xmap(self.s(), it, app=self._app)

    def starmap(self, it: Iterable[Sequence[Any]]) -> composites.xstarmap:
        """One ``celery.starmap`` message that calls this task with each item's arguments."""
        return composites.xstarmap(self.s(), it, app=self._app)

    def chunks(self, it: Iterable[Sequence[Any]], n: int) -> composites.chunks:
        """The items of ``it`` in chunks of ``n``, one ``celery.starmap`` message each."""
        return composites.chunks(self.s(), it, n, app=self._app)

    # -- inside a running task ------------------------------------------------------------------

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """Ask the worker to run this task again later; raises, so ``raise self.retry()``.

        With no retries left it raises ``exc`` (or MaxRetriesExceededError), and the task
        fails, as in Celery.
        """
        request = self.request
        limit = max_retries if max_retries is not None else self.max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}]: max_retries={limit} reached"
            )
        if eta is None:
            delay = countdown if countdown is not None else self.default_retry_delay
            eta = datetime.now(UTC) + timedelta(seconds=delay)
        raise Retry(exc, eta)

    def replace(self, sig: Mapping[str, Any]) -> NoReturn:
        """Replace this task with ``sig`` (a task, chain, group...), as Celery's
        ``Task.replace``: raises, so nothing after it runs (``return self.replace(sig)``
        reads best); the worker publishes ``sig`` and stores nothing for this task.

        ``sig``'s result becomes this task's: it runs under this task's id (a chain's last
        step; a group becomes a chord whose ``celery.accumulate`` body has it, its result
        the group's list). It takes over what followed this task: the rest of its chain,
        its ``link`` callbacks and errbacks, its place in a chord. Its messages count one
        more ``replaced_task_nesting``. Applied eagerly (``Task.apply``), ``sig`` runs here
        and its value is this task's result. Raises CanvasError for a ``sig`` already part
        of a chord, or an empty chain.
        """
        new = signature(copy.deepcopy(dict(sig)), app=self._app)
        _ending_in_one_task(new, self._app)  # its errors here, in the task, as Celery's
        raise Replace(new)

    def backoff_countdown(self, retries: int) -> float:
        """The countdown ``autoretry_for`` uses: exponential backoff with full jitter."""
        factor = self.options.retry_backoff
        if not factor:
            return self.default_retry_delay
        countdown = min(self.options.retry_backoff_max, float(factor) * 2.0**retries)
        if self.options.retry_jitter:
            countdown = random.uniform(0, countdown)
        return countdown

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Awaitable[None]:
        """Store a custom state (e.g. PROGRESS with ``{"current": 1, "total": 9}``)."""
        request = _state.current_request.get()
        target = task_id or (request.id if request else None)
        if not target:
            raise ValueError("update_state() outside a running task needs task_id=")
        if request is not None and request.is_eager and target == request.id:
            return answer(None)  # an eager run has no store: see apply()
        stored = self.app.store_state(
            target,
            state or "PROGRESS",
            dict(meta or {}),
            event=True,
            parent_id=request.parent_id if request else None,
            group_id=request.group if request else None,
            reply_to=request.reply_to if request and target == request.id else None,
        )
        if request is not None and request.on_progress is not None and target == request.id:
            request.on_progress(request, state or "PROGRESS", dict(meta or {}))
        return dual(stored)


def replacement(request: Request, sig: Mapping[str, Any], app: Celery | None = None) -> Signature:
    """What ``Task.replace(sig)`` publishes in the place of ``request``'s task, Celery 5.7's
    way: a copy of ``sig`` (a group made a chord with a ``celery.accumulate`` body, so it
    has a last task) that links the request's callbacks and errbacks, frozen with the
    request's id, with its chord membership, root id and nesting, and followed by the
    rest of its chain (whose steps keep their own ids).

    What it takes from ``request`` came in a message, with priorities in the wire's
    numbers: a worker gives ``sig`` in those numbers too
    (:func:`~celeriac.canvas.publish.signatures_to_wire`) and publishes the whole as it
    continues any canvas, ``from_wire``."""
    new = _ending_in_one_task(signature(copy.deepcopy(dict(sig)), app=app), app)
    for callback in request.callbacks or ():
        new.link(callback)
    for errback in request.errbacks or ():
        new.link_error(errback)
    if isinstance(new, composites._chain) and "link" in new.options:
        for callback in _listed(new.options.pop("link")):  # on the last task: run once
            new.tasks[-1].link(callback)
    new.freeze(request.id or None)
    nesting = request.replaced_task_nesting + 1
    _takes_the_place_of(new, request, nesting)
    for step in reversed(request.chain or ()):
        new = new | signature(copy.deepcopy(step), app=app).set(replaced_task_nesting=nesting)
    return new


def _ending_in_one_task(new: Signature, app: Celery | None) -> Signature:
    """``new``, checked, with a group (alone or ending a chain) made a chord, as Celery
    does: a replacement's result is one task's, stored under the replaced id."""
    if "chord" in new.options:
        raise CanvasError(
            "a signature replacing a task must not be part of a chord: replace the task"
            " with the chord itself"
        )
    if isinstance(new, composites._chain) and not new.tasks:
        raise CanvasError("cannot replace a task with an empty chain")
    if isinstance(new, composites.group):
        return new | _accumulate(app)
    if isinstance(new, composites._chain) and isinstance(new.tasks[-1], composites.group):
        new.tasks = [*new.tasks[:-1], new.tasks[-1] | _accumulate(app)]
    return new


def _takes_the_place_of(new: Signature, request: Request, nesting: int) -> None:
    """Give the frozen replacement the replaced task's chord membership, root id and
    ``replaced_task_nesting`` (each step of a chain the nesting too)."""
    new.set(
        chord=request.chord,
        group_id=request.group,
        group_index=request.group_index,
        root_id=request.root_id,
        replaced_task_nesting=nesting,
    )
    if isinstance(new, composites._chain):
        for task in new.tasks:
            task.set(replaced_task_nesting=nesting)
    if isinstance(new, composites.chord):
        # Celery's chord gives its options to its body, unset ones too: the body is in no
        # group (not the header's) unless the replaced task was.
        new.body.set(chord=request.chord, group_id=request.group, group_index=request.group_index)


def _accumulate(app: Celery | None) -> Signature:
    """The body Celery gives a group that replaces a task: its result is the group's list."""
    return Signature("celery.accumulate", (), {"index": 0}, app=app)


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, Mapping) else list(value)


async def _all_finished(results: list[AsyncResult[R]]) -> list[AsyncResult[R]]:
    for result in results:
        await result
    return results


class EagerCall:
    """One ``Task.apply``: runs the task (again on a retry) and records the outcome."""

    def __init__(
        self,
        task: Task[Any, Any],
        result: EagerResult[Any],
        args: list[Any],
        kwargs: dict[str, Any],
        retries: int,
        throw: bool,
    ) -> None:
        self.task = task
        self.result = result
        self.args = args
        self.kwargs = kwargs
        self.retries = retries
        self.throw = throw

    def run_sync(self) -> None:
        while True:
            token = _state.current_request.set(self._request())
            try:
                value = _drained(self.task.run(*self.args, **self.kwargs))
            except Replace as replaced:
                self._replaced_sync(replacement(self._running(), replaced.sig, self.task.app))
                return
            except Exception as exc:
                if not self._again(exc):
                    self._failed(exc)
                    return
            else:
                self.result.finish(states.SUCCESS, value)
                return
            finally:
                _state.current_request.reset(token)

    async def run_async(self) -> None:
        while True:
            token = _state.current_request.set(self._request())
            try:
                value = await _drained_async(self.task.run(*self.args, **self.kwargs))
            except Replace as replaced:
                await self._replaced_async(
                    replacement(self._running(), replaced.sig, self.task.app)
                )
                return
            except Exception as exc:
                if not self._again(exc):
                    self._failed(exc)
                    return
            else:
                self.result.finish(states.SUCCESS, value)
                return
            finally:
                _state.current_request.reset(token)

    def _running(self) -> Request:
        request = _state.current_request.get()
        assert request is not None  # set around the run that raised
        return request

    def _replaced_sync(self, new: Signature) -> None:
        """``self.replace(sig)``: ``sig`` runs here, its outcome is this task's."""
        try:
            value = _eager_value(new.apply())
        except Exception as exc:
            self._failed(exc)
        else:
            self.result.finish(states.SUCCESS, value)

    async def _replaced_async(self, new: Signature) -> None:
        try:
            outcome = new.apply()
            if isinstance(outcome, EagerResult) and outcome.state == states.STARTED:
                await outcome  # an async def task, started on this loop
            value = _eager_value(outcome)
        except Exception as exc:
            self._failed(exc)
        else:
            self.result.finish(states.SUCCESS, value)

    def _request(self) -> Request:
        return Request(
            id=self.result.id,
            task=self.task.name,
            args=self.args,
            kwargs=self.kwargs,
            retries=self.retries,
            is_eager=True,
        )

    def _again(self, exc: Exception) -> bool:
        """Whether ``exc`` asks for another run (``self.retry()``, or ``autoretry_for``
        with retries left), counting it."""
        if not isinstance(exc, Retry):
            autoretry = self.task.options.autoretry_for
            limit = self.task.max_retries
            if not (autoretry and isinstance(exc, autoretry)):
                return False
            if limit is not None and self.retries >= limit:
                return False
        self.retries += 1
        return True

    def _failed(self, exc: Exception) -> None:
        trace = "".join(traceback.format_exception(exc))
        self.result.finish(states.FAILURE, exc, trace)
        if self.throw:
            raise exc


def _eager_value(outcome: Any) -> Any:
    """The value of an eagerly applied canvas (a group's: its members' values), its
    exception raised."""
    if isinstance(outcome, EagerResult):
        return outcome._outcome(propagate=True)
    return [_eager_value(member) for member in outcome.results]


def _drained(value: Any) -> Any:
    """A task's result: a generator's last yielded value, or its return value when not
    None (what the worker stores for a streaming task); any other value as it is."""
    if not inspect.isgenerator(value):
        return value
    last = None
    while True:
        try:
            last = next(value)
        except StopIteration as stop:
            return stop.value if stop.value is not None else last


async def _drained_async(value: Any) -> Any:
    """``_drained`` for an ``async def`` task: awaits a coroutine, drains an async generator."""
    if inspect.iscoroutine(value):
        return await value
    if inspect.isasyncgen(value):
        last = None
        async for last in value:  # noqa: B007 - the last value is the result
            pass
        return last
    return _drained(value)


class AsyncTask(Task[P, R]):
    """A task whose function is ``async def``: calling it inline returns a coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        result: Coroutine[Any, Any, R] = self.run(*args, **kwargs)
        return result


class SyncTask(Task[P, R]):
    """A task whose function is a plain ``def``: calling it inline runs it."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.run(*args, **kwargs)
        return result


class StreamingTask(Task[P, R]):
    """A task whose function yields (a generator or an async generator): every value it
    yields is stored as a PROGRESS state and reaches ``result.stream()`` callers as it
    happens. Its result is the last value it yielded, or what a sync generator returns (when
    not None). Calling it inline returns the generator."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.run(*args, **kwargs)
