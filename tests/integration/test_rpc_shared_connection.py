"""rpc:// results over the broker's own connection: an app whose broker is RabbitMQ and whose
results are rpc:// opens one AMQP connection; its result store closes only its own channels
on it, and the broker the connection, once; and after RabbitMQ drops that connection, the
store subscribes to its reply queue again through the broker's new one.

The module has a virtual host of its own, so that the drop (``rabbitmqctl
close_all_connections --vhost``) reaches no other connection. The worker runs in the test's
loop on the same app: the caller and the worker share the one connection.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiormq.exceptions as amqp_errors
import pytest
from aiormq.abc import AbstractConnection

from celeriac import Celery
from celeriac.transports.amqp import connection as amqp_connection
from celeriac.transports.amqp.broker import AmqpBroker
from celeriac.transports.amqp.rpc import RpcBackend
from celeriac.worker.worker import Worker
from services import (
    add_amqp_vhost,
    amqp_vhost_url,
    delete_amqp_vhost,
    eventually,
    require_rabbitmq,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: Each wait's limit: every step here takes milliseconds when it works.
WAIT = 10.0


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    require_rabbitmq()
    name = f"celeriac-rpc-shared-{uuid.uuid4().hex[:12]}"
    add_amqp_vhost(name)
    try:
        yield name
    finally:
        delete_amqp_vhost(name)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[AbstractConnection]:
    """Every AMQP connection celeriac opens during the test (the broker and the rpc://
    store both open theirs through ``connection.connect``)."""
    connections: list[AbstractConnection] = []
    connect = amqp_connection.connect

    async def recorded(url: str, *, timeout: float) -> AbstractConnection:
        connection = await connect(url, timeout=timeout)
        connections.append(connection)
        return connection

    monkeypatch.setattr(amqp_connection, "connect", recorded)
    return connections


def make_app(vhost: str) -> Celery:
    app = Celery("rpc_shared", broker=amqp_vhost_url(vhost), backend="rpc://")

    @app.task(name="rpc_shared.echo")
    async def echo(value: str) -> str:
        return value

    return app


@asynccontextmanager
async def worker_running(app: Celery) -> AsyncIterator[None]:
    """A worker in this loop on ``app`` (connected already), stopped gracefully at the end."""
    worker = Worker(app, concurrency=2)
    running = asyncio.get_running_loop().create_task(worker.run())
    try:
        yield
        assert not running.done(), f"the worker stopped: {running!r}"
    finally:
        worker.stop()
        await asyncio.wait_for(running, WAIT)


async def echoed(app: Celery, value: str) -> str:
    result: str = await (await app.send_task("rpc_shared.echo", (value,))).get(timeout=WAIT)
    return result


async def transports(app: Celery) -> tuple[AmqpBroker, RpcBackend]:
    conn = await app.connection()
    assert isinstance(conn.broker, AmqpBroker) and isinstance(conn.backend, RpcBackend)
    return conn.broker, conn.backend


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def connections_on(vhost: str) -> int:
    """How many connections RabbitMQ has open on ``vhost``."""
    table = rabbitmqctl("list_connections", "vhost", "--no-table-headers", "--quiet")
    return sum(1 for line in table.splitlines() if line.strip() == vhost)


def complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_app_on_rabbitmq_with_rpc_results_opens_one_connection(
    vhost: str, opened: list[AbstractConnection]
) -> None:
    app = make_app(vhost)
    async with app.setup(), worker_running(app):
        assert await echoed(app, "one") == "one"
        broker, backend = await transports(app)
        assert len(opened) == 1, opened
        assert backend._connection is broker._connection is opened[0]
        assert await asyncio.to_thread(connections_on, vhost) == 1


async def test_the_store_closes_its_channels_and_the_broker_the_connection_once(
    vhost: str,
    opened: list[AbstractConnection],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's stop closes the app's connections: the store first, then the broker.
    What the store left is looked at as the broker's close begins."""
    app = make_app(vhost)
    closes: list[object] = []
    left: dict[str, bool] = {}
    with caplog.at_level(logging.WARNING):
        async with app.setup(), worker_running(app):
            assert await echoed(app, "two") == "two"
            broker, backend = await transports(app)
            assert len(opened) == 1, opened
            (connection,) = opened
            channels = [backend._listener, backend._publisher]
            assert all(c is not None and not c.is_closed for c in channels), channels
            listening = backend._listening
            assert listening is not None and not listening.done()
            close_connection, close_broker = connection.close, broker.close

            async def counted_close(*args: object, **kwargs: object) -> None:
                caller = str(sys._getframe(1).f_globals.get("__name__"))
                if caller.startswith("celeriac"):  # aiormq's own teardown calls it too
                    closes.append(caller)
                await close_connection(*args, **kwargs)  # type: ignore[arg-type]

            async def reply_queue_gone() -> bool:
                channel = await broker.channel()
                try:
                    await channel.queue_declare(backend.queue, passive=True)
                except amqp_errors.ChannelNotFoundEntity:
                    return True
                await channel.close()
                return False

            async def observed_close() -> None:
                left["connection open"] = not connection.is_closed
                left["channels closed"] = all(c is not None and c.is_closed for c in channels)
                left["keeper done"] = listening.done()
                try:
                    await eventually(reply_queue_gone, WAIT, "the reply queue to go")
                    left["reply queue gone"] = True
                except AssertionError:
                    left["reply queue gone"] = False
                await close_broker()

            monkeypatch.setattr(connection, "close", counted_close)
            monkeypatch.setattr(broker, "close", observed_close)
    assert left == dict.fromkeys(
        ("connection open", "channels closed", "keeper done", "reply queue gone"), True
    )
    # (How aiormq settles its own ``closing`` future is its business: under load it ends
    # cancelled even on a clean close, so it is not checked here.)
    assert closes == ["celeriac.transports.amqp.broker"] and connection.is_closed
    assert not complaints(caplog), complaints(caplog)


async def test_after_rabbitmq_drops_the_connection_the_store_listens_again_on_the_new_one(
    vhost: str, opened: list[AbstractConnection], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(vhost)
    with caplog.at_level(logging.WARNING, logger="celeriac"):
        async with app.setup(), worker_running(app):
            assert await echoed(app, "before") == "before"
            broker, backend = await transports(app)
            assert len(opened) == 1, opened
            (first,) = opened
            assert backend._reconnected_at is None

            await asyncio.to_thread(
                rabbitmqctl, "close_all_connections", "--vhost", vhost, "a test's outage"
            )
            await eventually(
                lambda: any("subscribed to the reply queue" in m for m in complaints(caplog)),
                WAIT,
                "the rpc:// store to subscribe again",
            )
            assert first.is_closed
            assert await echoed(app, "after") == "after"
            assert len(opened) == 2, opened
            assert backend._connection is broker._connection is opened[1]
            assert backend._reconnected_at is not None  # the grace period for reply queues
    said = complaints(caplog)
    assert sum("lost the reply queue" in m for m in said) == 1, said
    assert not any("cannot subscribe" in m for m in said), said
