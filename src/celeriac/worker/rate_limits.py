"""Which rate limit each task has in this worker: :class:`RateLimits`, the registry.

A task's limit comes from, first to last:

1. ``worker_disable_rate_limits``: every limit off (remote control still answers, as
   Celery's, and its limits apply once the setting is off);
2. a limit set at run time by remote control (``rate_limit`` command), for this worker
   process only, until it stops;
3. the task's own option (``@app.task(rate_limit="10/m")``);
4. ``task_annotations``: a dict ``{"task.name": {"rate_limit": ...}, "*": {...}}`` or a list
   of such dicts; the first dict that names the task wins, else the first ``"*"`` entry;
5. ``task_default_rate_limit``.

The options that go with a rate (``rate_limit_scope``, ``rate_limit_key``,
``rate_limit_burst``) are read the same way, each on its own, from the task's options then
the annotations. Annotations may set those four keys only; any other (Celery lets them set
any task attribute) is reported once, by a warning, and ignored.

Settings are checked when the registry is made (the worker's start): a bad value is a
:class:`~celeriac.errors.ConfigurationError` that names the setting. A task limited with
``rate_limit_scope="global"`` needs a result store that keeps shared counters (Redis or
SQLite): :meth:`RateLimits.check_store` refuses any other at start, naming the task.

The registry decides limits; :mod:`celeriac.worker.rate_limit_gate` enforces them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from celeriac.errors import ConfigurationError
from celeriac.rates import Rate, Scope, check_rate_options, parse_rate
from celeriac.transports.backend import KeyValueBackend

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.task import Task
    from celeriac.transports.backend import ResultBackend

logger = logging.getLogger("celeriac.worker")

#: The annotation keys celeriac reads (the task options of the same names).
ANNOTATION_KEYS = ("rate_limit", "rate_limit_scope", "rate_limit_key", "rate_limit_burst")


@dataclass(frozen=True, slots=True)
class TaskRate:
    """A task's effective limit: ``rate`` starts, in ``scope``; for the global scope, the
    budget of the result store it uses: ``limit`` starts per ``period`` under ``key``, at
    most ``burst`` of them in ``period * burst / limit`` seconds."""

    rate: Rate
    scope: Scope
    key: str
    limit: int
    period: float
    burst: int


def shared_budget(rate: Rate) -> tuple[int, float]:
    """``rate`` as the store counts it, a whole number of starts per period: ``"0.5/s"`` is
    one start per 2 s."""
    if rate.limit == int(rate.limit):
        return int(rate.limit), rate.period
    return 1, rate.interval


class RateLimits:
    """The rate limit of each task of one worker process, from its settings, its tasks'
    options and remote control (see the module doc)."""

    def __init__(self, app: Celery) -> None:
        conf = app.conf
        self.app = app
        self.disabled = bool(conf.worker_disable_rate_limits)
        try:
            self.default = parse_rate(conf.task_default_rate_limit)
        except ValueError as exc:
            raise ConfigurationError(f"task_default_rate_limit: {exc}") from None
        self.annotations = _annotations(conf.task_annotations)
        #: Limits set by remote control, by task name (None: taken off).
        self._set: dict[str, Rate | None] = {}
        #: Each task's effective limit, worked out once (a change of limit clears it).
        self._effective: dict[str, TaskRate | None] = {}
        #: The wall clock the gate reads (unix seconds, as the broker's ETAs are) and how it
        #: waits a few milliseconds in place: tests replace them.
        self.clock: Callable[[], float] = time.time
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def limit_of(self, task: Task[Any, Any]) -> TaskRate | None:
        """The limit the worker enforces for ``task`` now (None: none)."""
        if self.disabled:
            return None
        name = task.name
        try:
            return self._effective[name]
        except KeyError:
            effective = self._effective[name] = self._work_out(task)
            return effective

    def rate_of(self, task: Task[Any, Any]) -> Rate | None:
        """The rate set for ``task`` (as ``inspect registered`` shows it), whether or not
        ``worker_disable_rate_limits`` switches it off."""
        if task.name in self._set:
            return self._set[task.name]
        configured = self._configured(task, "rate_limit")
        return self.default if configured is None else parse_rate(configured)

    def set(self, name: str, rate: Rate | None) -> None:
        """Limit ``name`` to ``rate`` (None: no limit) in this worker from now on."""
        self._set[name] = rate
        self._effective.pop(name, None)

    def global_tasks(self) -> list[str]:
        """The names of the tasks limited across workers (scope ``global``)."""
        return sorted(
            name
            for name, task in self.app.tasks.items()
            if (limit := self.limit_of(task)) is not None and limit.scope == "global"
        )

    def check_store(self, backend: ResultBackend) -> None:
        """Refuse to start (ConfigurationError) when a task is limited across workers and
        ``backend`` cannot keep the shared budget (not a key-value store: rpc://, disabled),
        or its burst is over what the budget holds."""
        names = self.global_tasks()
        for name in names:
            task = self.app.tasks[name]
            limit = self.limit_of(task)
            burst = self._configured(task, "rate_limit_burst")
            assert limit is not None
            if burst is not None and burst > limit.limit:
                raise ConfigurationError(
                    f"task {name!r}: rate_limit_burst={burst} is over its rate limit"
                    f" {limit.rate} ({limit.limit} per {limit.period:g} s): give a burst from 1"
                    f" to {limit.limit}"
                )
        if not names or isinstance(backend, KeyValueBackend):
            return
        raise ConfigurationError(
            f"task {names[0]!r} has rate_limit_scope='global', but the result store"
            f" {backend.describe()} cannot share a rate limit between workers"
            + (f" (nor for {', '.join(map(repr, names[1:]))})" if names[1:] else "")
            + ": set result_backend to a Redis or SQLite store, or give the task"
            " rate_limit_scope='worker'"
        )

    def _work_out(self, task: Task[Any, Any]) -> TaskRate | None:
        rate = self.rate_of(task)
        if rate is None:
            return None
        scope = cast(Scope, self._configured(task, "rate_limit_scope") or "worker")
        key = self._configured(task, "rate_limit_key") or task.name
        limit, period = shared_budget(rate)
        # A burst over the limit is refused at start; one a lower limit set at run time
        # (remote control) leaves over it is cut to the limit, the most the store allows.
        burst = min(int(self._configured(task, "rate_limit_burst") or limit), limit)
        return TaskRate(rate, scope, str(key), limit, period, burst)

    def _configured(self, task: Task[Any, Any], option: str) -> Any:
        """``option`` from the task's options, else from the annotations (None: neither)."""
        own = getattr(task.options, option)
        return own if own is not None else _annotated(self.annotations, task.name, option)


def _annotated(annotations: list[dict[str, dict[str, Any]]], name: str, option: str) -> Any:
    """``option`` from the first annotation naming ``name``, else from the first ``"*"``."""
    for pattern in (name, "*"):
        for annotation in annotations:
            entry = annotation.get(pattern)
            if entry is not None and option in entry:
                return entry[option]
    return None


def _annotations(setting: Any) -> list[dict[str, dict[str, Any]]]:
    """``task_annotations`` as a list of dicts, checked; other keys warned about once."""
    if setting is None:
        return []
    listed = list(setting) if isinstance(setting, list | tuple) else [setting]
    ignored: set[str] = set()
    for index, annotation in enumerate(listed):
        where = "task_annotations" + (f"[{index}]" if isinstance(setting, list | tuple) else "")
        if not isinstance(annotation, Mapping):
            raise ConfigurationError(
                f"{where} is {annotation!r}: celeriac reads annotations as dicts"
                ' {"task.name": {"rate_limit": "10/s"}} ("*" for every task), or a list of them'
            )
        for name, entry in annotation.items():
            if not isinstance(entry, Mapping):
                raise ConfigurationError(
                    f'{where}[{name!r}] is {entry!r}: use a dict such as {{"rate_limit": "10/s"}}'
                )
            try:
                check_rate_options(
                    f"{where}[{name!r}]", *(entry.get(key) for key in ANNOTATION_KEYS)
                )
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
            ignored.update(key for key in entry if key not in ANNOTATION_KEYS)
    if ignored:
        logger.warning(
            "task_annotations sets %s: celeriac reads only %s there, and ignores the rest",
            ", ".join(sorted(map(repr, ignored))),
            ", ".join(ANNOTATION_KEYS),
        )
    return [{str(k): dict(v) for k, v in annotation.items()} for annotation in listed]
