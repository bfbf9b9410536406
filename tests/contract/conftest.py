"""Fixtures that run the contract suite against every transport.

A new transport joins by adding one entry to ``BROKERS`` and one to ``BACKENDS``: a factory
taking the test's ``tmp_path`` and returning an unconnected instance's URL and class.
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
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker, reset_memory_transports
from celeriac.brokers.sqlite import SQLiteBroker

# name -> (class, URL for this test's store); every instance of one test shares the store.
BROKERS: dict[str, tuple[type[Broker], Callable[[Path], str]]] = {
    "memory": (MemoryBroker, lambda tmp: f"memory://contract-{uuid.uuid4().hex}"),
    "sqlite": (SQLiteBroker, lambda tmp: f"sqlite:///{tmp}/celeriac.db"),
}
BACKENDS: dict[str, tuple[type[ResultBackend], Callable[[Path], str]]] = {
    "memory": (MemoryBackend, lambda tmp: f"memory://contract-{uuid.uuid4().hex}"),
    "sqlite": (SQLiteBackend, lambda tmp: f"sqlite:///{tmp}/celeriac.db"),
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
    cls, url_for = BROKERS[request.param]
    url = url_for(tmp_path)
    made: list[Broker] = []

    async def make(*, max_message_size: int = 0, options: dict[str, Any] | None = None) -> Broker:
        broker = cls(url, max_message_size=max_message_size, options=options)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.close()


@pytest.fixture
async def broker(make_broker: MakeBroker) -> Broker:
    return await make_broker()


@pytest.fixture(params=sorted(BACKENDS))
async def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeBackend]:
    """A factory of connected result backends sharing one store; all closed at the end."""
    cls, url_for = BACKENDS[request.param]
    url = url_for(tmp_path)
    made: list[ResultBackend] = []

    async def make(*, options: dict[str, Any] | None = None) -> ResultBackend:
        backend = cls(url, options=options)
        await backend.connect()
        made.append(backend)
        return backend

    yield make
    for backend in reversed(made):
        await backend.close()


@pytest.fixture
async def backend(make_backend: MakeBackend) -> ResultBackend:
    return await make_backend()


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses, so tests could share one server."""
    return f"q-{uuid.uuid4().hex}"
