"""The transports the tests know, listed once in :data:`TRANSPORTS`.

Every suite that runs on several transports takes its list from here: the contract suite
(``tests/contract``) runs on every broker and every result backend; the worker tests of
``tests/integration`` (the ``broker_url`` fixture) on every transport a worker subprocess can
reach; the interop suite (``tests/interop``) on every broker Celery speaks too. Each entry
also says how a test gets a fresh store of its own: its URL and options, the service it needs
running, and what deletes what the test left there. What only one suite needs stays in that
suite's conftest (the contract's ``NOT_FOR``, for instance), keyed by the same names.

Adding a transport to the tests:

1. Its package under ``src/celeriac/transports/`` and its line in ``SCHEMES`` (the scheme
   table of ``celeriac/transports/__init__.py``).
2. One :class:`Transport` below: its ``name`` (the tests' ID, as in ``[redis]``); its
   ``broker`` and/or ``backend`` class; its ``store``, a function of a :class:`Corner` and a
   role that returns a fresh :class:`Store`; the ``server`` it needs (``require`` skips, or
   under ``CI=true`` fails, a test when it is down; add the server to ``_REQUIRE`` if it is a
   new one); and the flags that say which suites can use it (``in_process``, ``celery``,
   ``rides_on``, ``max_priority``).
3. Run ``tests/contract``: it is done when the whole contract passes on it. A contract test
   that cannot apply to it is listed, with the reason, in ``NOT_FOR`` of
   ``tests/contract/conftest.py``; a worker test that cannot, is deselected there too, as
   ``tests/integration/conftest.py`` does for ``rpc``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from celeriac.transports.amqp.broker import AmqpBroker
from celeriac.transports.amqp.rpc import RpcBackend
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker
from celeriac.transports.memory.backend import MemoryBackend
from celeriac.transports.memory.broker import MemoryBroker, reset_memory_transports
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.sqlite import wakeup
from celeriac.transports.sqlite.backend import SQLiteBackend
from celeriac.transports.sqlite.broker import SQLiteBroker
from services import (
    AMQP_URL,
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    amqp_vhost_url,
    delete_prefixed,
    redis_url,
    require_rabbitmq,
    require_redis,
)

#: What a store is for: a broker's queues, or a result backend's records.
Role = Literal["broker", "backend"]
#: The shared servers the tests use, and the check that each is up.
Server = Literal["redis", "rabbitmq"]
_REQUIRE: dict[Server, Callable[[], None]] = {"redis": require_redis, "rabbitmq": require_rabbitmq}


def _unique_name() -> str:
    return f"celeriac-test-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Corner:
    """Where one test (or one test module) keeps its stores, so that tests never meet: its
    temporary directory, a name of its own (Redis keys go under ``name:``; AMQP queues a
    test must name are named after it), the two Redis databases of its suite, and the
    RabbitMQ virtual host of its own, if it has one (else it shares the default one)."""

    tmp: Path
    name: str = field(default_factory=_unique_name)
    redis_dbs: tuple[int, int] = (REDIS_DB_BROKER, REDIS_DB_RESULTS)  # broker's, results'
    amqp_vhost: str | None = None

    @property
    def prefix(self) -> str:
        """The Redis ``global_keyprefix`` of this corner's keys."""
        return f"{self.name}:"


def _nothing() -> None:
    """Nothing to clean: the store goes with its test's directory or virtual host."""


@dataclass(frozen=True)
class Store:
    """A fresh store on one transport: its URL, the transport options a client of it needs
    (every client of one test shares them), and what deletes what the test left there
    (called at teardown, once its clients are closed)."""

    url: str
    options: dict[str, Any]
    clean: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Transport:
    """One transport the tests run on."""

    #: The tests' ID of it (``test_x[redis]``), and the key suites list it under.
    name: str
    #: Its broker class, None if it is no broker.
    broker: type[Broker] | None
    #: Its result backend class, None if it keeps no results.
    backend: type[ResultBackend] | None
    #: A fresh store for a test's corner, as a broker's or as a result backend's.
    store: Callable[[Corner, Role], Store]
    #: The shared server it needs running, None if it needs none.
    server: Server | None = None
    #: Lives in one process: a worker subprocess cannot reach it (the contract suite only).
    in_process: bool = False
    #: Celery speaks it too, so the interop suite runs Celery and celeriac on it.
    celery: bool = False
    #: The broker transport whose server carries its results (rpc://: replies over AMQP).
    rides_on: str | None = None
    #: ``task_queue_max_priority`` its queues are declared with, where priorities need one
    #: (RabbitMQ's ``x-max-priority``); the other brokers order priorities anyway.
    max_priority: int | None = None

    def require(self) -> None:
        """Skip the test (under ``CI=true``, fail it) unless this transport's server is up."""
        if self.server is not None:
            _REQUIRE[self.server]()


def _memory(corner: Corner, role: Role) -> Store:
    return Store(f"memory://{corner.name}", {}, reset_memory_transports)


def _remove_wakeups(db_path: str) -> None:
    """Remove the database's wake-up sockets, which live under the system's temporary
    directory (keyed by the database's path), not beside the database."""
    channels = os.path.dirname(wakeup.channel_directory(db_path, "tasks"))
    shutil.rmtree(channels, ignore_errors=True)


def _sqlite(corner: Corner, role: Role) -> Store:
    path = str(corner.tmp / "celeriac.db")
    return Store(f"sqlite:///{path}", {}, partial(_remove_wakeups, path))


def _redis(corner: Corner, role: Role) -> Store:
    db = corner.redis_dbs[0 if role == "broker" else 1]
    options = {"global_keyprefix": corner.prefix}
    return Store(redis_url(db), options, partial(delete_prefixed, corner.prefix, db))


def _amqp(corner: Corner, role: Role) -> Store:
    """In a virtual host of the corner's own, the transport's default names are the test's
    alone (its owner deletes it); in the shared default virtual host, the queues every
    broker declares (dead letters, delays) are named after the test. Queues declared by name
    are deleted by the suite, which knows them."""
    if corner.amqp_vhost is not None:
        return Store(amqp_vhost_url(corner.amqp_vhost), {})
    options = {
        "dead_letter_queue": f"{corner.name}.dead",
        "delay_queue_prefix": f"{corner.name}.delay",
    }
    return Store(AMQP_URL, options)


def _rpc(corner: Corner, role: Role) -> Store:
    # Reply queues are exclusive and auto-deleted: nothing outlives the backend.
    return Store("rpc://", {})


#: Every transport the tests know, by name. Suites filter it (brokers, backends, ...).
TRANSPORTS: dict[str, Transport] = {
    t.name: t
    for t in (
        Transport("memory", MemoryBroker, MemoryBackend, _memory, in_process=True),
        Transport("sqlite", SQLiteBroker, SQLiteBackend, _sqlite),
        Transport("redis", RedisBroker, RedisBackend, _redis, server="redis", celery=True),
        Transport("amqp", AmqpBroker, None, _amqp, server="rabbitmq", celery=True, max_priority=9),
        Transport("rpc", None, RpcBackend, _rpc, server="rabbitmq", celery=True, rides_on="amqp"),
    )
}
