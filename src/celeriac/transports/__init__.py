"""URL scheme -> transport class. Drivers of optional transports are imported lazily.

Adding a transport is one module and one line in each table below.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from celeriac._install import install_hint
from celeriac.errors import ConfigurationError
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker

# scheme -> (module, class name, extra that installs its driver or None)
_BROKERS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("celeriac.transports.sqlite.broker", "SQLiteBroker", None),
    "memory": ("celeriac.transports.memory.broker", "MemoryBroker", None),
    "redis": ("celeriac.transports.redis.broker", "RedisBroker", "redis"),
    "rediss": ("celeriac.transports.redis.broker", "RedisBroker", "redis"),
    "amqp": ("celeriac.transports.amqp.broker", "AmqpBroker", "amqp"),
    "amqps": ("celeriac.transports.amqp.broker", "AmqpBroker", "amqp"),
}
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("celeriac.transports.sqlite.backend", "SQLiteBackend", None),
    "memory": ("celeriac.transports.memory.backend", "MemoryBackend", None),
    "redis": ("celeriac.transports.redis.backend", "RedisBackend", "redis"),
    "rediss": ("celeriac.transports.redis.backend", "RedisBackend", "redis"),
    "rpc": ("celeriac.transports.amqp.rpc", "RpcBackend", "amqp"),
    "disabled": ("celeriac.transports.disabled", "DisabledBackend", None),
}


def _load(table: dict[str, tuple[str, str, str | None]], url: str, what: str) -> Any:
    scheme = urlsplit(url).scheme
    if scheme not in table:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise ConfigurationError(f"unsupported {what} URL {url!r}: use one of {known}")
    module_name, class_name, extra = table[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        # The driver's package, not the submodule that failed (aiormq, not aiormq.exceptions).
        driver = (exc.name or "?").partition(".")[0]
        raise ConfigurationError(
            f"{what} {scheme}:// needs an optional driver ({driver}): {install_hint(extra)}"
        ) from exc
    return getattr(module, class_name)


def broker_from_url(
    url: str,
    *,
    max_message_size: int,
    options: dict[str, Any],
    queue_max_priority: int | None = None,
) -> Broker:
    cls = _load(_BROKERS, url, "broker")
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
    cls = _load(_BACKENDS, url, "result backend")
    backend: ResultBackend = cls(url, options=options, broker_url=broker_url)
    return backend
