"""Celery: the application object. Configuration, task registry, connections, send_task."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, ParamSpec, Protocol, TypedDict, TypeVar, Unpack, cast, overload

from celeriac import _bridge, _state, config, sending
from celeriac._bridge import dual
from celeriac.canvas import Signature, signature
from celeriac.canvas.signature import send
from celeriac.config import Settings
from celeriac.connections import Connection, Connections, address, publish_in_chunks
from celeriac.control import Control
from celeriac.discovery import Packages, discover
from celeriac.errors import ResourceError
from celeriac.ids import new_ids, uuid
from celeriac.protocol.clock import LamportClock
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.records import make_meta
from celeriac.rates import Scope
from celeriac.resources import Resource
from celeriac.result import AsyncResult
from celeriac.sending import CanvasOptions, SendOptions
from celeriac.signals import Signal
from celeriac.states import READY_STATES
from celeriac.task import AsyncTask, StreamingTask, SyncTask, Task, TaskOptions
from celeriac.transports.backend import ResultBackend

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("celeriac.app")


class TaskKwargs(TypedDict, total=False):
    name: str
    max_retries: int | None
    default_retry_delay: float
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    queue: str
    priority: int
    ignore_result: bool
    time_limit: float
    soft_time_limit: float
    acks_late: bool
    serializer: str
    rate_limit: str | float | None
    rate_limit_scope: Scope
    rate_limit_key: str
    rate_limit_burst: int


class TaskDecorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, AsyncIterator[R]], /
    ) -> StreamingTask[P, R]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Iterator[R]], /
    ) -> StreamingTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...


class BoundTaskDecorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[..., Coroutine[Any, Any, R]], /
    ) -> AsyncTask[..., R]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[..., AsyncIterator[R]], /
    ) -> StreamingTask[..., R]: ...
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[..., Iterator[R]], /
    ) -> StreamingTask[..., R]: ...
    @overload
    def __call__(self, fn: Callable[..., R], /) -> SyncTask[..., R]: ...


class Celery:
    """A celeriac application: ``Celery("proj", broker=..., backend=...)``."""

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        self.conf.update(settings)
        self._tasks: dict[str, Task[Any, Any]] = {}
        #: ``autodiscover_tasks`` calls left for :meth:`finalize`: (packages, related_name).
        self._pending_discovery: deque[tuple[Packages, str | None]] = deque()
        self._finalize_lock = threading.RLock()
        self._finalized = False
        self._finalizing = False
        #: Declared with ``@app.resource`` (or ``define_app_context``): built once per worker
        #: process (see :mod:`celeriac.resources`).
        self.resources: dict[str, Resource[Any]] = {}
        self._context: dict[str, Any] | None = None
        #: The Lamport clock of this process's remote-control messages and events.
        self.clock = LamportClock()
        self._connections = Connections(self.conf, self.clock)
        self._sending: set[asyncio.Future[Any]] = set()
        #: Remote control of the workers (``app.control.inspect().active()``).
        self.control = Control(self)
        #: Celery's app signals, sent once by :meth:`finalize` (see :mod:`celeriac.signals`).
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
        for register in _state.apps.made(self):
            register(self)
        if set_as_current:
            self.set_current()

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'}>"

    def set_current(self) -> None:
        """Make this the current app of this thread (and the last one made current, which
        other threads use when they have none of their own and no default is set)."""
        _state.apps.set_current(self)

    def set_default(self) -> None:
        """Make this the app of every thread that set no current app of its own."""
        _state.apps.set_default(self)

    # -- configuration -------------------------------------------------------------------------

    def config_from_object(
        self, obj: object | str, *, silent: bool = False, namespace: str | None = None
    ) -> None:
        """Read settings from a module, class or object, or a dotted name of one
        (``"proj.celeryconfig"``, ``"django.conf:settings"``), as Celery does.

        Its public attributes are given to ``conf.update``: Celery's old upper-case names are
        read, a near-miss of a setting is an error, other names are kept and ignored. With
        ``namespace="CELERY"`` (Django), only ``CELERY_``-prefixed names are read, and what
        follows the prefix names the setting (``CELERY_BROKER_URL`` is ``broker_url``).
        Unlike Celery, the settings are read at once, not when the app is first used.
        ``silent`` ignores a module that cannot be imported, as in Celery.
        """
        if isinstance(obj, str):
            try:
                obj = config.import_object(obj)
            except ImportError:
                if silent:
                    return
                raise
        self.conf.update(config.values_of(obj, namespace))

    def autodiscover_tasks(
        self,
        packages: Packages = None,
        related_name: str | None = "tasks",
        force: bool = False,
    ) -> list[str] | None:
        """Import ``<package>.tasks`` of each package (a Django app's tasks), registering the
        tasks they define; a package without such a module is skipped, as in Celery. An error
        inside one is raised. Returns the names of the modules imported, or None when the
        import is left for :meth:`finalize`.

        As in Celery, without packages (Django's ``INSTALLED_APPS``, which are not loaded
        yet where ``proj/celery.py`` calls this) or with a callable that returns them, the
        import waits until the app is finalized: when the worker loads the app, or when
        ``app.tasks`` is first read. A list of packages, or ``force=True``, imports at once.
        """
        with self._finalize_lock:
            deferred = not force and (packages is None or callable(packages))
            if deferred and not self._finalized:
                self._pending_discovery.append((packages, related_name))
                return None
        return discover(packages, related_name)

    @property
    def finalized(self) -> bool:
        """Whether :meth:`finalize` has run every deferred ``autodiscover_tasks``."""
        return self._finalized

    def finalize(self) -> None:
        """Carry out the deferred ``autodiscover_tasks`` calls, once, as Celery's
        ``app.finalize()`` does: the worker calls it after loading the app, and reading
        ``app.tasks`` calls it, so a task name is looked up only once its module is imported.

        A discovery that fails is raised and kept, so the next call tries it again. A task
        module that reads ``app.tasks`` while it is imported does not start a second round.
        """
        with self._finalize_lock:
            if self._finalized or self._finalizing:
                return
            self._finalizing = True
            try:
                while self._pending_discovery:
                    discover(*self._pending_discovery[0])
                    self._pending_discovery.popleft()
                self._finalized = True
            finally:
                self._finalizing = False
        # Once the task modules are in, so receivers they connect are called too.
        self.on_after_configure.send(self, source=self.conf)
        self.on_after_finalize.send(self)

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks by name; reading it finalizes the app (see :meth:`finalize`)."""
        if not self._finalized:
            self.finalize()
        return self._tasks

    # -- periodic tasks ------------------------------------------------------------------------

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Signature,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Add a ``beat_schedule`` entry that sends ``sig`` on ``schedule`` (seconds, a
        ``timedelta`` or a ``celeriac.schedules`` schedule), as Celery's method does:
        ``args``/``kwargs`` complete the signature's own (``args`` before its arguments),
        ``options`` join its options, and the entry is named ``name`` or after the
        signature (``tasks.add(2, 2)``). Returns the entry's name. The entry is checked when
        a scheduler reads it (an error naming it, before anything is sent)."""
        if args or kwargs:
            sig = sig.clone(tuple(args), dict(kwargs or {}))
        key = name or repr(sig)
        self.conf.beat_schedule[key] = {
            "schedule": schedule,
            "task": sig.name,
            "args": tuple(sig.args),
            "kwargs": dict(sig.kwargs),
            "options": {**sig.options, **options},
        }
        return key

    # -- tasks ---------------------------------------------------------------------------------

    @overload
    def task(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def task(  # type: ignore[overload-overlap]
        self, fn: Callable[P, AsyncIterator[R]], /
    ) -> StreamingTask[P, R]: ...
    @overload
    def task(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Iterator[R]], /
    ) -> StreamingTask[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Unpack[TaskKwargs]) -> BoundTaskDecorator: ...
    @overload
    def task(
        self, *, bind: Literal[False] = False, **options: Unpack[TaskKwargs]
    ) -> TaskDecorator: ...

    # mypy cannot match a positional-only ``fn`` against the keyword-only overloads.
    def task(  # type: ignore[misc]
        self, fn: Callable[..., Any] | None = None, /, *, bind: bool = False, **options: Any
    ) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options."""

        def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
            return self.register(function, bind=bind, **options)

        return decorate(fn) if fn is not None else decorate

    def register(
        self, fn: Callable[..., Any], *, bind: bool = False, **options: Any
    ) -> Task[Any, Any]:
        task = _make_task(self, fn, bind=bind, **options)
        self._tasks[task.name] = task
        return task

    # -- resources -----------------------------------------------------------------------------

    @overload
    def resource(self, factory: Callable[[], AsyncIterator[R]], /) -> Resource[R]: ...
    @overload
    def resource(self, factory: Callable[[], Iterator[R]], /) -> Resource[R]: ...
    @overload
    def resource(self, factory: Callable[[], Awaitable[R]], /) -> Resource[R]: ...
    @overload
    def resource(self, factory: Callable[[], R], /) -> Resource[R]: ...

    def resource(self, factory: Callable[[], Any], /) -> Resource[Any]:
        """Declare a resource every worker process builds once (see :mod:`celeriac.resources`).

        ``factory`` is an async or sync generator (setup, ``yield`` the instance, teardown) or
        an async or sync function returning the instance; its name names the resource.
        """
        name = factory.__name__
        if name in self.resources:
            raise ResourceError(f"a resource named {name!r} is already declared on {self!r}")
        declared: Resource[Any] = Resource(name, factory)
        self.resources[name] = declared
        return declared

    def define_app_context(
        self, factory: Callable[[], AbstractAsyncContextManager[Mapping[str, Any] | None]]
    ) -> Callable[[], AbstractAsyncContextManager[Mapping[str, Any] | None]]:
        """aio-celery's way, for code that migrates: ``factory()`` is an async context manager
        yielding a dict that tasks read as ``app.context[...]`` while the worker runs. New code
        can declare each entry with ``@app.resource`` and receive it as a parameter."""

        async def app_context() -> AsyncIterator[Mapping[str, Any]]:
            async with factory() as values:
                self._context = dict(values or {})
                try:
                    yield self._context
                finally:
                    self._context = None

        self.resources["app_context"] = Resource("app_context", app_context)
        return factory

    @property
    def context(self) -> Mapping[str, Any]:
        """What the ``define_app_context`` factory yielded, inside a running worker."""
        if self._context is None:
            raise ResourceError(
                "app.context is set only while a worker of this process runs (declare it with"
                " @app.define_app_context)"
            )
        return self._context

    # -- connections ---------------------------------------------------------------------------

    async def connection(self) -> Connection:
        """This loop's broker and result store, connected on first use."""
        return await self._connections.get()

    def current_connection(self) -> Connection | None:
        """This loop's broker and result store if they are open (never opens them)."""
        return self._connections.current()

    def hold(self, sending: asyncio.Future[Any]) -> None:
        """Keep a publish started in async code until it ends: ``close()`` waits for it, so
        a caller that never awaits it still has its messages sent."""
        self._sending.add(sending)
        sending.add_done_callback(self._sent)

    @asynccontextmanager
    async def setup(self) -> AsyncIterator[Celery]:
        """Connect now and close on exit: ``async with app.setup(): ...`` (web lifespans)."""
        await self.connection()
        try:
            yield self
        finally:
            await self._close()

    def close(self) -> Awaitable[None]:
        """Close this loop's connections (the sync bridge's in sync code)."""
        return dual(self._close())

    async def _close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._connections.close()

    # -- publishing ------------------------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        **options: Unpack[CanvasOptions],
    ) -> AsyncResult[Any]:
        """Queue a task by name. In async code the publish starts now; await to confirm it.

        The message is built here, so bad arguments (unserializable, bad priority) raise in
        the caller in both calling styles. A canvas option (``link=``...) sends it as
        ``app.signature(name, args, kwargs).apply_async(...)`` does, never inline.
        """
        try:
            plan = sending.plan(self.conf, name, **cast(SendOptions, options))
        except TypeError:  # an option plan() does not take: a canvas one, or a mistake
            if sending.CANVAS_OPTION_NAMES.isdisjoint(options):
                raise
            sig = Signature(name, args, kwargs, app=self)
            sent = send(sig, None, None, {"task_id": task_id, **options})
            return cast(AsyncResult[Any], sent)
        task_id = task_id or uuid()
        envelope = sending.build(plan, task_id, args, kwargs)
        queue, priority, when = plan.queue, plan.priority, plan.visible_at
        result: AsyncResult[Any] = AsyncResult(task_id, self, task_name=name)
        if _bridge.in_async_context():
            loop = asyncio.get_running_loop()
            conn = self.current_connection()
            sending_now: asyncio.Future[None] | None = None
            if conn is not None and conn.sent_events is None:  # else _publish sends it too
                address(envelope, conn.backend)
                sending_now = conn.broker.publish_now(queue, envelope, priority=priority, eta=when)
            if sending_now is None:
                sending_now = loop.create_task(self._publish(queue, envelope, priority, when))
            self.hold(sending_now)
            result._sending = sending_now
        else:
            _bridge.run(self._publish(queue, envelope, priority, when))
        return result

    def send_many(
        self,
        name: str,
        calls: Iterable[Sequence[Any] | Mapping[str, Any]],
        **options: Unpack[SendOptions],
    ) -> Awaitable[list[AsyncResult[Any]]]:
        """Queue one task per call, in as few round trips as the broker allows; awaited in
        async code, blocking in sync code, it returns the results in the calls' order. In
        async code the publishing starts at once, as ``send_task``'s does.

        A call is a tuple (or list) of positional arguments or a dict of keyword arguments.
        The options are ``send_task``'s and apply to every message. Every message is built
        before the first is sent, so a bad call raises with nothing queued; a broker that
        fails midway raises with a note of which calls were queued.
        """
        plan = sending.plan(self.conf, name, **options)
        with sending.collector_paused():  # many objects, no cycles: see collector_paused
            calls = list(calls)
            ids = new_ids(len(calls))
            envelopes = sending.build_many(plan, ids, calls)
        sending_many = self._send_many(plan, ids, envelopes)
        if not _bridge.in_async_context():
            return cast(Awaitable[list[AsyncResult[Any]]], _bridge.run(sending_many))
        # Started now, as send_task's publish is: a forgotten await still queues the batch.
        started = asyncio.get_running_loop().create_task(sending_many)
        self.hold(started)
        return started

    async def _send_many(
        self, plan: sending.Plan, ids: list[str], envelopes: list[Envelope]
    ) -> list[AsyncResult[Any]]:
        conn = await self.connection()
        await publish_in_chunks(conn, envelopes, plan.queue, plan.priority, plan.visible_at)
        with sending.collector_paused():
            return [AsyncResult(task_id, self, task_name=plan.name) for task_id in ids]

    async def _publish(self, queue: str, envelope: Any, priority: int, eta: float | None) -> None:
        conn = await self.connection()
        address(envelope, conn.backend)
        await conn.broker.publish(queue, envelope, priority=priority, eta=eta)
        if conn.sent_events is not None:
            await conn.sent_events.send(conn.broker, [envelope], queue)

    def _sent(self, sending: asyncio.Future[Any]) -> None:
        self._sending.discard(sending)

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        return AsyncResult(task_id, self)

    def signature(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature on this app: ``app.signature("proj.add", (2, 2), countdown=10)``
        (see :func:`celeriac.canvas.signature`)."""
        return signature(*args, app=self, **kwargs)

    # -- results --------------------------------------------------------------------------------

    async def store_state(
        self,
        task_id: str,
        state: str,
        result: Any,
        *,
        traceback: str | None = None,
        parent_id: str | None = None,
        group_id: str | None = None,
        event: bool = False,
        reply_to: str | None = None,
        backend: ResultBackend | None = None,
        children: list[Any] | None = None,
    ) -> None:
        """Write a task's record in Celery's format to the result store; with ``event``, a
        state that is not final also joins the task's event log (what ``stream()`` reads).
        ``reply_to`` is the task message's (rpc:// sends the record there). ``backend`` is
        this loop's, for a caller that holds it (the worker, for every task: finding the
        loop's connection costs more than the rest of this method). ``children``: the
        results the task published (Celery's ``as_tuple()`` form), as the record lists them."""
        meta = make_meta(
            task_id,
            state,
            result,
            traceback=traceback,
            parent_id=parent_id,
            group_id=group_id,
            children=children,
        )
        if backend is None:
            backend = (await self.connection()).backend
        expires = self.conf.result_expires
        if event and state not in READY_STATES:
            await backend.store_event(task_id, meta, expires=expires, reply_to=reply_to)
        else:
            await backend.store(task_id, meta, expires=expires, reply_to=reply_to)


def _make_task(
    app: Celery | None, fn: Callable[..., Any], *, bind: bool = False, **options: Any
) -> Task[Any, Any]:
    """The task ``fn`` makes, bound to ``app`` (None: to the current app at each call)."""
    name = options.pop("name", None) or f"{fn.__module__}.{fn.__qualname__}"
    task_options = TaskOptions(name=name, bind=bind, **options)
    cls: type[Task[Any, Any]]
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        cls = StreamingTask
    elif asyncio.iscoroutinefunction(fn):
        cls = AsyncTask
    else:
        cls = SyncTask
    return cls(app, fn, task_options)


def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Like ``@app.task``, for reusable modules: the task is registered on every app, made
    before or after it, and the task returned sends through the current app at each call
    (see :func:`celeriac._state.get_current_app`), as Celery's does. Calling ``delay()``
    with no app made yet is an error, never a send to some default broker no worker reads."""

    def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
        def register(app: Celery) -> None:
            app.register(function, **dict(options))

        unbound = _make_task(None, function, **dict(options))  # checks the options first
        for app in _state.apps.share(register):
            register(app)
        return unbound

    return decorate(fn) if fn is not None else decorate
