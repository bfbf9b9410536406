"""Settings, with Celery's lower-case names and celeriac's defaults.

Only names listed in :class:`Settings` are read. A name close to one of them is an error that
suggests it, so a typo never silently falls back to a default; a name far from every setting
(a Flask or Django key in a shared config) is kept and ignored, as Celery does. A value of the
wrong type is an error that names the setting and the type. Celery's old upper-case names and
Django's ``CELERY_``-prefixed ones are read as the lower-case settings they stand for. Where
celeriac's default differs from Celery's, the field says so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

from celeriac._celery_settings import is_celery_setting
from celeriac.errors import ConfigurationError

DEFAULT_BROKER_URL = "sqlite:///celeriac.db"
BROKER_URL_ENV = "CELERIAC_BROKER_URL"
RESULT_BACKEND_ENV = "CELERIAC_RESULT_BACKEND"

logger = logging.getLogger("celeriac.config")

#: Celery's old upper-case names (``celery/app/defaults.py``) of the settings celeriac reads.
#: Celery still reads them; so does celeriac, as the setting they stand for.
OLD_NAMES: dict[str, str] = {
    "BROKER_URL": "broker_url",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": "result_backend_transport_options",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_PRIORITY": "task_default_priority",
    "CELERY_QUEUE_MAX_PRIORITY": "task_queue_max_priority",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child",
    "CELERY_TIMEZONE": "timezone",
    "ENABLE_UTC": "enable_utc",
}

#: How alike (difflib's ratio) an unknown name must be to a setting to be taken for a typo of
#: it, and refused; a less alike name is someone else's key (Flask's ``SECRET_KEY``) and is
#: kept. ``task_acks_lat`` scores 0.96 against ``task_acks_late``.
NEAR_MISS_RATIO = 0.85

#: Beginnings of Celery's own setting names: such a name that celeriac does not read (Celery's
#: ``task_routes``) is ignored with a warning, since its author expects it to do something.
CELERY_LOOKING = (
    "broker_", "result_", "task_", "worker_", "beat_", "event_", "control_", "database_",
    "redis_", "security_", "cassandra_", "mongodb_", "imports", "include", "celery",
)  # fmt: skip

#: What to do instead, for a Celery setting celeriac ignores that its author surely relies on.
_POOL_HINT = (
    ": celeriac has no pool types; every worker process runs async def tasks on its event"
    " loop and plain def tasks in threads. worker_processes (-P N) sets the processes"
)
IGNORED_HINTS = {
    "worker_pool": _POOL_HINT,
    "celeryd_pool": _POOL_HINT,
    "celery_worker_pool": _POOL_HINT,
}


@dataclass
class Settings:
    """Every setting celeriac reads. Set them with ``app.conf.update(...)`` or attributes."""

    broker_url: str | None = None
    result_backend: str | None = None
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict)
    #: Largest task body accepted, in bytes (celeriac's; Celery has no limit).
    broker_max_message_size: int = 16 * 1024 * 1024

    task_default_queue: str = "celery"
    task_default_priority: int | None = None
    task_queue_max_priority: int | None = None
    task_serializer: str = "json"
    #: Results are stored as JSON on every store, as Celery's default: any other is refused.
    result_serializer: str = "json"
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    #: Unlike Celery (False), celeriac acknowledges after the task ends: at-least-once.
    task_acks_late: bool = True
    task_ignore_result: bool = False
    task_track_started: bool = False
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    task_default_retry_delay: float = 180.0
    task_max_retries: int | None = 3
    #: ``delay``/``apply_async`` run the task in the caller, as ``apply`` does (for tests).
    task_always_eager: bool = False
    #: An eagerly run task's exception is raised by ``apply`` (and ``delay`` when eager).
    task_eager_propagates: bool = False
    result_expires: float | None = 86400.0
    #: Largest encoded result record stored, in bytes (celeriac's; Celery has no limit); a
    #: larger one is stored as a FAILURE that says so. 0: no limit of celeriac's own. The
    #: default equals ``broker_max_message_size`` and RabbitMQ 4's default
    #: ``max_message_size`` (an rpc:// result is a RabbitMQ message), and stays far under
    #: Redis's 512 MB ``proto-max-bulk-len``: every waiter reads a result whole.
    result_max_size: int = 16 * 1024 * 1024

    #: Tasks run at once per worker process (async tasks on the loop; celeriac's default).
    worker_concurrency: int = 100
    worker_prefetch_multiplier: int = 4
    #: Threads that run plain ``def`` tasks (celeriac's); None: min(32, worker_concurrency).
    worker_threads: int | None = None
    #: Seconds a graceful shutdown waits for running tasks before requeueing them (celeriac's).
    worker_shutdown_timeout: float = 30.0
    #: A pool's child process is replaced after this many tasks (Celery's).
    worker_max_tasks_per_child: int | None = None
    #: ... or once its resident memory passes this many KiB (Celery's unit).
    worker_max_memory_per_child: int | None = None
    #: Processes ``celeriac worker`` runs on its ``-Q`` queues (1: no supervisor).
    worker_processes: int = 1
    #: Seconds the event loop may stay blocked (an ``async def`` task calling ``time.sleep``)
    #: before the worker logs a warning naming the task (celeriac's); 0 or None: no check.
    worker_loop_block_warning: float | None = 1.0
    #: Workers answer remote control (``celery inspect``, Flower, ``app.control``).
    worker_enable_remote_control: bool = True
    #: The name remote-control exchanges are made of: ``<name>.pidbox`` for requests,
    #: ``reply.<name>.pidbox`` for replies (Celery's).
    control_exchange: str = "celery"
    #: Seconds a revoke holds: a task revoked this long ago runs if it comes (Celery keeps
    #: revoked ids 3 hours: ``CELERY_WORKER_REVOKE_EXPIRES``).
    worker_revoke_expires: float = 10800.0

    #: Workers send task events (``-E``): ``task-received``, ``task-started``... on
    #: ``event_exchange``, for Flower and ``celery events``. Worker events (online,
    #: heartbeats, offline) are sent either way, as Celery's.
    worker_send_task_events: bool = False
    #: Clients send ``task-sent`` for each task they publish.
    task_send_sent_event: bool = False
    #: The exchange events go to (Celery's ``celeryev``).
    event_exchange: str = "celeryev"
    #: On RabbitMQ, seconds an event waits in a receiver's queue, and an unused receiver
    #: queue lives (Celery's ``event_queue_ttl`` and ``event_queue_expires``).
    event_queue_ttl: float = 5.0
    event_queue_expires: float = 60.0
    #: Seconds between a worker's heartbeats (Celery's ``--heartbeat-interval``).
    worker_heartbeat_interval: float = 2.0
    #: Several pools in one command: name -> {"queues": [...], "processes": N,
    #: "concurrency": N} (see celeriac.worker.pools).
    worker_pools: dict[str, dict[str, Any]] | None = None

    #: Rate limits (Celery's): a task without its own ``rate_limit`` has this one
    #: (``"10/s"``, ``"100/m"``, ``"1000/h"``, a number per second; None: no limit).
    task_default_rate_limit: str | float | None = None
    #: Celery's ``task_annotations``: ``{"task.name": {"rate_limit": "10/s"}}``, ``"*"``
    #: for every task, or a list of such dicts; only ``rate_limit`` is read.
    task_annotations: dict[str, Any] | list[Any] | None = None
    #: Every rate limit off, as Celery's ``worker_disable_rate_limits``.
    worker_disable_rate_limits: bool = False

    #: Periodic tasks (Celery's): entry name -> ``{"task", "schedule", "args", "kwargs",
    #: "options"}`` and celeriac's ``"missed"`` (see celeriac.beat).
    beat_schedule: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Longest sleep of the scheduler between two looks at the schedule, in seconds; runtime
    #: changes to the stored entries are seen within it (Celery's default is 300 s).
    beat_max_loop_interval: float = 5.0
    #: Seconds within which another scheduler takes over when the leading one dies
    #: (celeriac's; RedBeat's lock holds 25 minutes by default).
    beat_failover_timeout: float = 10.0
    #: Runs missed while no scheduler ran: ``"once"`` (Celery's: one run now), ``"all"``
    #: (each missed run, oldest first) or ``"skip"``; an entry's ``"missed"`` key overrides.
    beat_missed_runs: str = "once"
    #: Celery's: a crontab run missed by more than this many seconds is skipped, whatever
    #: the missed-runs policy says (None: no deadline).
    beat_cron_starting_deadline: float | None = None

    #: The zone crontab schedules are read in (an unknown zone name is refused, as Celery
    #: refuses it); None: UTC. Messages carry UTC times and a naive ``eta`` is read as UTC,
    #: as Celery 5 does; Celery's ``enable_utc=False`` writes the same instants with a local
    #: offset, which any reader takes alike. Without a ``timezone``, ``enable_utc=False``
    #: reads crontabs in the machine's zone.
    timezone: str | None = None
    enable_utc: bool = True

    _foreign: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        #: Names that are not settings (a Flask config's ``SECRET_KEY``): kept, never read.
        object.__setattr__(self, "_foreign", {})

    def __setattr__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set several settings at once; every name and value is checked before any is set.

        Celery's old upper-case names (``CELERYD_CONCURRENCY``) and Django's ``CELERY_``
        names (``CELERY_BROKER_URL``) set the setting they stand for. A name close to a
        setting is an error that suggests it; any other name is kept and ignored.
        """
        settings: dict[str, Any] = {}
        foreign: dict[str, Any] = {}
        for name, value in {**(values or {}), **more}.items():
            setting = setting_name(name)
            if setting is not None:
                settings[setting] = checked(setting, value)
            elif near_miss(name) is not None and not is_celery_setting(name):
                raise unknown_setting(name)
            else:
                foreign[name] = value
        for setting, value in settings.items():
            object.__setattr__(self, setting, value)
        if foreign:
            self._keep(foreign)

    def _keep(self, foreign: Mapping[str, Any]) -> None:
        """Keep names that are not settings; warn once about each that looks like Celery's
        (its author expects it to do something), never about a Flask or Django key."""
        for name in foreign:
            if name in self._foreign or not isinstance(name, str):
                continue
            if is_celery_setting(name):
                logger.warning(
                    "Celery's setting %r is not one celeriac reads and is ignored%s",
                    name,
                    IGNORED_HINTS.get(name.lower(), " (docs/configuration.md lists the settings)"),
                )
            elif name.lower().startswith(CELERY_LOOKING):
                logger.warning(
                    "setting %r is not one celeriac reads and is ignored"
                    " (docs/configuration.md lists the settings)",
                    name,
                )
        self._foreign.update(foreign)

    if not TYPE_CHECKING:  # type checkers keep refusing a misspelt setting

        def __getattr__(self, name: str) -> Any:
            """A kept foreign key, as an attribute (``app.conf.SECRET_KEY``), as Celery
            allows; called only for a name that is not a setting. Anything else is an
            AttributeError that suggests the setting it is close to."""
            foreign = self.__dict__.get("_foreign")
            if foreign is not None and name in foreign:
                return foreign[name]
            if name.startswith("__"):  # copy, pickle and the like probe for these
                raise AttributeError(name)
            raise AttributeError(str(unknown_setting(name)))

    def __getitem__(self, name: str) -> Any:
        setting = setting_name(name)
        if setting is not None:
            return getattr(self, setting)
        if name in self._foreign:
            return self._foreign[name]
        raise unknown_setting(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def get(self, name: str, default: Any = None) -> Any:
        """A setting or a kept foreign key, else ``default`` (as a dict's ``get``)."""
        setting = setting_name(name)
        if setting is not None:
            return getattr(self, setting)
        return self._foreign.get(name, default)

    def effective_broker_url(self) -> str:
        """The broker URL in force: the environment wins over code, then the embedded default."""
        return os.environ.get(BROKER_URL_ENV) or self.broker_url or DEFAULT_BROKER_URL

    def effective_result_backend(self) -> str:
        """The result store in force. By default the broker's own store keeps results (the
        embedded broker's file, or the same Redis database); a broker without one (RabbitMQ)
        keeps none, as Celery without a result backend (``disabled://``), rather than
        writing them to a file of its own choosing."""
        configured = os.environ.get(RESULT_BACKEND_ENV) or self.result_backend
        if configured == "disabled":  # Celery's name for it
            return "disabled://"
        if configured:
            return configured
        broker = self.effective_broker_url()
        if broker.startswith(("sqlite:", "memory:", "redis:", "rediss:")):
            return broker
        return "disabled://"

    def effective_worker_threads(self) -> int:
        return self.worker_threads or max(1, min(32, self.worker_concurrency))


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Settings) if f.init)
_FIELD_TYPES = {name: get_type_hints(Settings)[name] for name in _FIELD_NAMES}
#: Every name that sets a setting: its own, Celery's old one, and Django's ``CELERY_`` one.
_ALIASES = {
    **{name: name for name in _FIELD_NAMES},
    **OLD_NAMES,
    **{f"CELERY_{name.upper()}": name for name in _FIELD_NAMES},
}


def setting_name(name: str) -> str | None:
    """The setting ``name`` sets (itself, or the one an old or Django name stands for)."""
    return _ALIASES.get(name)


def near_miss(name: str) -> str | None:
    """The name ``name`` is most likely a typo of, if it is that close to one."""
    import difflib  # only for a name that is not a setting

    if not isinstance(name, str):  # a foreign mapping's key may be anything hashable
        return None
    close = difflib.get_close_matches(name, sorted(_ALIASES), n=1, cutoff=NEAR_MISS_RATIO)
    return close[0] if close else None


def checked(setting: str, value: Any) -> Any:
    """``value`` if it has the setting's type (a ``timedelta`` for seconds becomes a number,
    a tuple for a list a list, as Celery takes them), else an error naming both."""
    expected = _FIELD_TYPES[setting]
    if isinstance(value, timedelta) and _allows(expected, float):
        return value.total_seconds()
    if isinstance(value, tuple) and _allows(expected, list):
        value = list(value)
    if _matches(expected, value):
        check = _VALUE_CHECKS.get(setting)
        if check is not None:
            check(value)
        return value
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ConfigurationError(
        f"setting {setting!r} must be {_describe(expected)}, not {type(value).__name__} {shown}"
    )


def _json_results(value: str) -> None:
    """``result_serializer``: results are stored as JSON on every result store (Celery's
    default); a record in another format would need its own encoding on every backend."""
    if value.strip().lower() not in ("json", "application/json"):
        raise ConfigurationError(
            f"setting 'result_serializer' is {value!r}, but celeriac stores every result as"
            " JSON (Celery's default result_serializer, which Celery peers sharing the result"
            " store must use too): set it to 'json' or leave it out, and return values JSON"
            " can encode"
        )


def _zone_name(value: str | None) -> None:
    """``timezone``: a name Celery could not load is refused, as Celery refuses it when it
    first reads it (celeriac itself writes UTC whatever the zone)."""
    if value is None:
        return
    import zoneinfo  # only when a zone is set

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        if zoneinfo.available_timezones():  # without a zone database there is nothing to check
            raise ConfigurationError(
                f"setting 'timezone' is {value!r}, which is not a time zone name: use an IANA"
                " name such as 'Europe/London' or 'UTC'"
            ) from None


#: Settings whose value is checked beyond its type: one celeriac would not honour is refused.
def _missed_runs(value: str) -> None:
    """``beat_missed_runs``: one of the three policies."""
    if value not in MISSED_RUN_POLICIES:
        raise ConfigurationError(
            f"setting 'beat_missed_runs' is {value!r}: use one of {', '.join(MISSED_RUN_POLICIES)}"
        )


#: What a scheduler does with runs missed while none ran (celeriac.beat).
MISSED_RUN_POLICIES = ("once", "all", "skip")

_VALUE_CHECKS: dict[str, Callable[[Any], None]] = {
    "result_serializer": _json_results,
    "timezone": _zone_name,
    "beat_missed_runs": _missed_runs,
}


def _alternatives(expected: Any) -> tuple[Any, ...]:
    if get_origin(expected) in (Union, types.UnionType):
        return get_args(expected)
    return (expected,)


def _allows(expected: Any, kind: type) -> bool:
    return any((get_origin(t) or t) is kind for t in _alternatives(expected))


def _matches(expected: Any, value: Any) -> bool:
    for kind in _alternatives(expected):
        origin = get_origin(kind) or kind
        if kind is Any:
            return True
        if kind is type(None):
            ok = value is None
        elif origin is bool:
            ok = isinstance(value, bool)
        elif origin is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif origin is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif origin is list:
            (item,) = get_args(kind)
            ok = isinstance(value, list) and all(_matches(item, v) for v in value)
        elif origin is dict:
            ok = isinstance(value, Mapping)
        else:
            ok = isinstance(value, origin)
        if ok:
            return True
    return False


def _describe(expected: Any) -> str:
    words = {bool: "a bool (True or False)", int: "an int", float: "a number of seconds"}
    named = []
    for kind in _alternatives(expected):
        origin = get_origin(kind) or kind
        if kind is type(None):
            named.append("None")
        elif origin is list:
            named.append(f"a list of {get_args(kind)[0].__name__}")
        elif origin is dict:
            named.append("a dict")
        else:
            named.append(words.get(origin, f"a {origin.__name__}"))
    return " or ".join(named)


def unknown_setting(name: str) -> ConfigurationError:
    close = near_miss(name)
    if close is None:
        import difflib  # only for a misspelt setting

        matches = difflib.get_close_matches(name, sorted(_FIELD_NAMES), n=1, cutoff=0.5)
        close = matches[0] if matches else None
    hint = f": did you mean {close!r}?" if close else ": see docs/configuration.md"
    return ConfigurationError(f"unknown setting {name!r}{hint}")


def import_object(name: str) -> object:
    """The module or attribute a dotted name names, as Celery reads its config name:
    ``"proj.celeryconfig"``, ``"proj.settings:Config"`` or ``"proj.settings.Config"``."""
    import importlib

    module_name, _, attribute = name.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        parent, _, last = module_name.rpartition(".")
        if attribute or not parent or missing.name != module_name:
            raise
        found, attribute = importlib.import_module(parent), last
        if not hasattr(found, last):
            raise
    return getattr(found, attribute) if attribute else found


def values_of(source: object, namespace: str | None) -> dict[str, Any]:
    """The settings a config object holds: a mapping's items, or an object's public
    attributes other than modules, classes and functions (a config module's imports and
    helpers). With a namespace, only its names, without the prefix: ``CELERY_BROKER_URL``
    is ``broker_url``, as Celery reads Django's settings."""
    import inspect

    if isinstance(source, Mapping):
        values = {str(name): value for name, value in source.items()}
    else:
        values = {}
        for name in dir(source):
            if name.startswith("_"):
                continue
            value = getattr(source, name)
            if not (inspect.ismodule(value) or inspect.isclass(value) or callable(value)):
                values[name] = value
    if namespace is None:
        return values
    prefix = f"{namespace}_"
    return {
        name.removeprefix(prefix).lower(): value
        for name, value in values.items()
        if name.startswith(prefix)
    }
