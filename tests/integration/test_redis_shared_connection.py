"""A Redis result store on its broker's database borrows the broker's client: one connection
to Redis per app instead of two, closed once, by the broker, after the store's writes are in.

Anything that makes the two reach Redis differently (another database, host, password, TLS
or client option) keeps two clients. Connections are counted from this process's side
(Linux's ``/proc``), since the client sets no name the server could filter on.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.transports.memory.broker import MemoryBroker
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.client import Client
from celeriac.worker.worker import Worker
from services import (
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    REDIS_PORT,
    delete_prefixed,
    redis_url,
    require_redis,
)

pytestmark = pytest.mark.integration

WAIT = 20.0
PROC = Path("/proc/self")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of the test's own (broker keys, result keys), deleted afterwards."""
    require_redis()
    name = f"celeriac-test-shared-{uuid.uuid4().hex[:12]}:"
    yield name
    delete_prefixed(name, REDIS_DB_BROKER, REDIS_DB_RESULTS)


def make_app(prefix: str, broker_db: int, backend_db: int) -> Celery:
    app = Celery("shared", broker=redis_url(broker_db), backend=redis_url(backend_db))
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    app.conf.task_default_queue = f"{prefix}queue"

    @app.task(name="shared.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def clients(app: Celery) -> tuple[Client, Client]:
    """The app's broker client and result store client (connected on first use)."""
    conn = await app.connection()
    assert isinstance(conn.broker, RedisBroker)
    assert isinstance(conn.backend, RedisBackend)
    return conn.broker.client, conn.backend.client


@asynccontextmanager
async def worker_for(app: Celery) -> AsyncIterator[Celery]:
    """The app connected and a worker of this loop consuming its queue, stopped at the end."""
    async with app.setup():
        worker = Worker(app, concurrency=4)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            yield app
            assert not running.done(), f"the worker stopped: {running!r}"
        finally:
            worker.stop()
            await asyncio.wait_for(running, WAIT)


def sockets_to_redis() -> int:
    """This process's established TCP connections to the test Redis."""
    if not (PROC / "net" / "tcp").exists():
        pytest.skip("counting this process's connections needs Linux's /proc")
    inodes = set()
    for fd in (PROC / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for line in (PROC / "net" / "tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        established = state == "01"
        if established and int(remote.split(":")[1], 16) == REDIS_PORT and inode in inodes:
            count += 1
    return count


async def test_a_store_on_the_brokers_database_uses_the_brokers_client(prefix: str) -> None:
    before = sockets_to_redis()
    app = make_app(prefix, REDIS_DB_BROKER, REDIS_DB_BROKER)
    try:
        broker_client, backend_client = await clients(app)
        assert backend_client is broker_client
        sent = await app.send_task("shared.add", (1, 2))  # LPUSH, on the broker's side
        assert await sent.refresh() == "PENDING"  # GET, on the store's side
        assert sockets_to_redis() == before + 1
    finally:
        await app.close()
    assert sockets_to_redis() == before


async def test_a_task_runs_and_its_result_is_read_on_one_client(prefix: str) -> None:
    async with worker_for(make_app(prefix, REDIS_DB_BROKER, REDIS_DB_BROKER)) as app:
        broker_client, backend_client = await clients(app)
        assert backend_client is broker_client
        results = [await app.send_task("shared.add", (i, i)) for i in range(20)]
        assert [await r.get(timeout=WAIT) for r in results] == [2 * i for i in range(20)]


async def test_a_store_on_another_database_keeps_a_client_of_its_own(prefix: str) -> None:
    before = sockets_to_redis()
    app = make_app(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)
    try:
        broker_client, backend_client = await clients(app)
        assert backend_client is not broker_client
        sent = await app.send_task("shared.add", (1, 2))
        assert await sent.refresh() == "PENDING"
        assert sockets_to_redis() == before + 2
    finally:
        await app.close()
    assert sockets_to_redis() == before


async def test_closing_flushes_the_stores_then_closes_the_client_once(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(prefix, REDIS_DB_BROKER, REDIS_DB_BROKER)
    broker_client, backend_client = await clients(app)
    assert backend_client is broker_client
    backend = (await app.connection()).backend
    assert isinstance(backend, RedisBackend)

    # Close while the first batch of stores is on its way (the rest wait behind it).
    writing = asyncio.Event()
    flush = backend._stores._flush

    async def flush_in_view(records: list[Any]) -> None:
        writing.set()
        await flush(records)

    monkeypatch.setattr(backend._stores, "_flush", flush_in_view)
    ids = [f"{prefix}task-{i}" for i in range(200)]
    loop = asyncio.get_running_loop()
    stores = [
        loop.create_task(backend.store(i, {"status": "SUCCESS", "result": n}, expires=60))
        for n, i in enumerate(ids)
    ]
    await asyncio.wait_for(writing.wait(), WAIT)

    closes: list[bool] = []  # per aclose(): were all stores done by then?
    aclose = broker_client.aclose

    async def counted_aclose() -> None:
        closes.append(all(store.done() for store in stores))
        await aclose()

    monkeypatch.setattr(broker_client, "aclose", counted_aclose)
    await app.close()
    assert closes == [True]
    assert [store.exception() for store in stores] == [None] * len(stores)

    later = make_app(prefix, REDIS_DB_BROKER, REDIS_DB_BROKER)
    try:
        assert [await later.AsyncResult(i).get(timeout=WAIT) for i in ids] == list(range(200))
    finally:
        await later.close()


async def test_results_stored_on_a_shared_client_outlive_it(prefix: str) -> None:
    async with worker_for(make_app(prefix, REDIS_DB_BROKER, REDIS_DB_BROKER)) as app:
        results = [await app.send_task("shared.add", (i, 1)) for i in range(20)]
        for result in results:
            await result.get(timeout=WAIT)
    later = make_app(prefix, REDIS_DB_BROKER, REDIS_DB_BROKER)
    try:
        assert [await later.AsyncResult(r.id).get(timeout=WAIT) for r in results] == [
            i + 1 for i in range(20)
        ]
    finally:
        await later.close()


BASE = "redis://127.0.0.1:6379/14"


@pytest.mark.parametrize(
    ("broker_url", "broker_options", "backend_url", "backend_options", "shared"),
    [
        (BASE, {}, BASE, {}, True),
        # Only the client is shared: key prefixes and other options may differ.
        (
            BASE,
            {"global_keyprefix": "a:", "visibility_timeout": 60},
            BASE,
            {"global_keyprefix": "b:"},
            True,
        ),
        ("redis://127.0.0.1:6379", {}, "redis://127.0.0.1/0", {}, True),
        (BASE, {"socket_timeout": 5}, BASE, {"socket_timeout": 5.0}, True),
        (BASE, {}, "redis://127.0.0.1:6379/15", {}, False),
        (BASE, {}, "redis://localhost:6379/14", {}, False),
        (BASE, {}, "redis://127.0.0.1:6380/14", {}, False),
        ("redis://:one@127.0.0.1:6379/14", {}, "redis://:two@127.0.0.1:6379/14", {}, False),
        ("redis://a:pw@127.0.0.1:6379/14", {}, "redis://b:pw@127.0.0.1:6379/14", {}, False),
        (BASE, {}, "rediss://127.0.0.1:6379/14", {}, False),
        (
            "rediss://127.0.0.1:6379/14?ssl_cert_reqs=none",
            {},
            "rediss://127.0.0.1:6379/14?ssl_cert_reqs=required",
            {},
            False,
        ),
        (BASE, {"socket_timeout": 5}, BASE, {}, False),
        (BASE, {}, BASE, {"socket_connect_timeout": 1}, False),
        (BASE, {"health_check_interval": 10}, BASE, {"health_check_interval": 30}, False),
    ],
)
async def test_which_stores_borrow_the_brokers_client(
    broker_url: str,
    broker_options: dict[str, Any],
    backend_url: str,
    backend_options: dict[str, Any],
    shared: bool,
) -> None:
    # No server needed: a client connects on first use, and nothing is used here.
    broker = RedisBroker(broker_url, options=broker_options)
    backend = RedisBackend(backend_url, options=backend_options)
    backend.share_connection(broker)
    await broker.connect()
    await backend.connect()
    try:
        assert (backend.client is broker.client) is shared
    finally:
        await backend.close()
        await broker.close()


async def test_a_store_keeps_its_own_client_beside_another_broker() -> None:
    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}")
    backend = RedisBackend(BASE)
    backend.share_connection(broker)
    await broker.connect()
    await backend.connect()
    try:
        assert isinstance(backend.client, Client)
    finally:
        await backend.close()
        await broker.close()
