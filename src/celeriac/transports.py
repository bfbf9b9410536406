"""URL scheme -> transport class. Drivers of optional transports are imported lazily.

Adding a transport is one module and one line in each table below.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from celeriac._install import install_hint
from celeriac.backends.base import ResultBackend
from celeriac.brokers.base import Broker
from celeriac.errors import ConfigurationError

# scheme -> (module, class name, extra that installs its driver or None)
_BROKERS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("celeriac.brokers.sqlite", "SQLiteBroker", None),
    "memory": ("celeriac.brokers.memory", "MemoryBroker", None),
    "redis": ("celeriac.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("celeriac.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("celeriac.brokers.amqp", "AmqpBroker", "amqp"),
    "amqps": ("celeriac.brokers.amqp", "AmqpBroker", "amqp"),
}
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("celeriac.backends.sqlite", "SQLiteBackend", None),
    "memory": ("celeriac.backends.memory", "MemoryBackend", None),
    "redis": ("celeriac.backends.redis", "RedisBackend", "redis"),
    "rediss": ("celeriac.backends.redis", "RedisBackend", "redis"),
    "rpc": ("celeriac.backends.rpc", "RpcBackend", "amqp"),
    "disabled": ("celeriac.backends.disabled", "DisabledBackend", None),
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
