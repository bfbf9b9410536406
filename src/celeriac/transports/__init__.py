"""The scheme table: which broker and result store each URL scheme opens. Drivers of
optional transports are imported only when their scheme is used.

Adding a transport is one package beside these (``transports/<technology>/``) and one line
per scheme in :data:`SCHEMES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celeriac._install import install_hint
from celeriac.errors import ConfigurationError
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker


@dataclass(frozen=True, slots=True)
class Scheme:
    """What a URL scheme opens: ``"module:Class"`` of its broker and of its result store,
    the module under ``celeriac.transports`` (None: the scheme is not one), and the
    celeriac extra that installs its driver."""

    broker: str | None
    backend: str | None
    extra: str | None = None


SCHEMES: dict[str, Scheme] = {
    "memory": Scheme("memory.broker:MemoryBroker", "memory.backend:MemoryBackend"),
    "sqlite": Scheme("sqlite.broker:SQLiteBroker", "sqlite.backend:SQLiteBackend"),
    "redis": Scheme("redis.broker:RedisBroker", "redis.backend:RedisBackend", "redis"),
    "rediss": Scheme("redis.broker:RedisBroker", "redis.backend:RedisBackend", "redis"),
    "amqp": Scheme("amqp.broker:AmqpBroker", None, "amqp"),
    "amqps": Scheme("amqp.broker:AmqpBroker", None, "amqp"),
    "rpc": Scheme(None, "amqp.rpc:RpcBackend", "amqp"),
    "disabled": Scheme(None, "disabled:DisabledBackend"),
}  # fmt: skip


def _load(url: str, what: str) -> Any:
    """The class ``url``'s scheme names for ``what`` ("broker" or "result backend")."""
    scheme = urlsplit(url).scheme
    entry = SCHEMES.get(scheme)
    target = None if entry is None else entry.broker if what == "broker" else entry.backend
    if entry is None or target is None:
        role = "broker" if what == "broker" else "backend"
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES) if getattr(SCHEMES[s], role))
        raise ConfigurationError(f"unsupported {what} URL {url!r}: use one of {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        if entry.extra is None:
            raise
        # The driver's package, not the submodule that failed (aiormq, not aiormq.exceptions).
        driver = (exc.name or "?").partition(".")[0]
        raise ConfigurationError(
            f"{what} {scheme}:// needs an optional driver ({driver}): {install_hint(entry.extra)}"
        ) from exc
    return getattr(module, class_name)


def broker_from_url(
    url: str,
    *,
    max_message_size: int,
    options: dict[str, Any],
    queue_max_priority: int | None = None,
) -> Broker:
    cls = _load(url, "broker")
    broker: Broker = cls(
        url,
        max_message_size=max_message_size,
        options=options,
        queue_max_priority=queue_max_priority,
    )
    return broker


def backend_from_url(
    url: str, *, options: dict[str, Any], broker_url: str | None = None
) -> ResultBackend:
    cls = _load(url, "result backend")
    backend: ResultBackend = cls(url, options=options, broker_url=broker_url)
    return backend
