"""Fixtures that run the contract suite against every transport.

A new transport joins by adding one entry to ``BROKERS`` and one to ``BACKENDS``: its class
and a factory taking the test's ``tmp_path`` and returning the store's URL and options (every
instance of one test shares them). Redis stores get a key prefix of their own per test, and
the test's keys are deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import _wakeup
from celeriac.backends.base import ResultBackend
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.redis import RedisBackend
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.brokers.amqp import AmqpBroker
from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker, reset_memory_transports
from celeriac.brokers.redis import RedisBroker
from celeriac.brokers.sqlite import SQLiteBroker
from services import (
    AMQP_URL,
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    delete_amqp_queues,
    delete_prefixed,
    redis_url,
    require_rabbitmq,
    require_redis,
)

Store = tuple[str, dict[str, Any]]  # URL, options


def _memory(tmp: Path) -> Store:
    return f"memory://contract-{uuid.uuid4().hex}", {}


def _sqlite(tmp: Path) -> Store:
    return f"sqlite:///{tmp}/celeriac.db", {}


def _redis(db: int) -> Callable[[Path], Store]:
    def store(tmp: Path) -> Store:
        require_redis()
        return redis_url(db), {"global_keyprefix": f"celeriac-test-{uuid.uuid4().hex}:"}

    return store


def _amqp(tmp: Path) -> Store:
    require_rabbitmq()
    test = f"celeriac-test-{uuid.uuid4().hex}"
    return AMQP_URL, {"dead_letter_queue": f"{test}.dead", "delay_queue_prefix": f"{test}.delay"}


def _amqp_broker(url: str, **kwargs: Any) -> Broker:
    # Priorities need queues declared with x-max-priority on RabbitMQ.
    return AmqpBroker(url, queue_max_priority=9, **kwargs)


# name -> (class, this test's store)
BROKERS: dict[str, tuple[Callable[..., Broker], Callable[[Path], Store]]] = {
    "memory": (MemoryBroker, _memory),
    "sqlite": (SQLiteBroker, _sqlite),
    "redis": (RedisBroker, _redis(REDIS_DB_BROKER)),
    "amqp": (_amqp_broker, _amqp),
}
BACKENDS: dict[str, tuple[type[ResultBackend], Callable[[Path], Store]]] = {
    "memory": (MemoryBackend, _memory),
    "sqlite": (SQLiteBackend, _sqlite),
    "redis": (RedisBackend, _redis(REDIS_DB_RESULTS)),
}

MakeBroker = Callable[..., Awaitable[Broker]]
MakeBackend = Callable[..., Awaitable[ResultBackend]]


@pytest.fixture(autouse=True)
def _clean_up(tmp_path: Path) -> Iterator[None]:
    yield
    reset_memory_transports()
    # SQLite wake-up sockets live under the temp directory, keyed by the database path.
    channels = _wakeup.channel_directory(str(tmp_path / "celeriac.db"), "tasks")
    shutil.rmtree(os.path.dirname(channels), ignore_errors=True)


@pytest.fixture(params=sorted(BROKERS))
async def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBroker]:
    """A factory of connected brokers that share one store; all are closed at the end."""
    cls, store_for = BROKERS[request.param]
    url, base = store_for(tmp_path)
    made: list[Broker] = []

    async def make(*, max_message_size: int = 0, options: dict[str, Any] | None = None) -> Broker:
        broker = cls(url, max_message_size=max_message_size, options={**base, **(options or {})})
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.close()
    _delete_prefixed(url, base)
    declared = {name for b in made if isinstance(b, AmqpBroker) for name in b.declared}
    if declared:
        await delete_amqp_queues(declared)


@pytest.fixture
async def broker(make_broker: MakeBroker) -> Broker:
    return await make_broker()


@pytest.fixture(params=sorted(BACKENDS))
async def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeBackend]:
    """A factory of connected result backends sharing one store; all closed at the end."""
    cls, store_for = BACKENDS[request.param]
    url, base = store_for(tmp_path)
    made: list[ResultBackend] = []

    async def make(*, options: dict[str, Any] | None = None) -> ResultBackend:
        backend = cls(url, options={**base, **(options or {})})
        await backend.connect()
        made.append(backend)
        return backend

    yield make
    for backend in reversed(made):
        await backend.close()
    _delete_prefixed(url, base)


def _delete_prefixed(url: str, options: dict[str, Any]) -> None:
    """Delete the Redis keys this test made (all under its own prefix), nothing else."""
    prefix = options.get("global_keyprefix")
    if prefix:
        delete_prefixed(prefix, int(url.rsplit("/", 1)[1]))


@pytest.fixture
async def backend(make_backend: MakeBackend) -> ResultBackend:
    return await make_backend()


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses, so tests could share one server."""
    return f"q-{uuid.uuid4().hex}"
