"""A driver's own errors never reach a caller: what Redis answers with an error (``WRONGTYPE``,
``NOAUTH``) and a server out of reach come out of ``delay()``, ``get()``, a consumer and the
admin calls as celeriac's errors (BrokerError, BrokerUnreachable, BackendUnreachable), with
the driver's error as their cause and the server named, its password hidden.

The keys of the wrong type are made under a key prefix of the test's own on the shared Redis
(DBs 14 and 15); a Redis that asks for a password is a private one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from celeriac import AsyncResult, Celery
from celeriac.errors import (
    BackendUnreachable,
    BrokerError,
    BrokerUnreachable,
    CeleriacError,
    ConfigurationError,
)
from celeriac.transports.redis import kombu
from services import (
    REDIS_DB_BROKER,
    REDIS_DB_RESULTS,
    REDIS_HOST,
    REDIS_PORT,
    delete_prefixed,
    free_port,
    redis_url,
    require_redis,
)

from .private_redis import PrivateRedis

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-pass"


def _app(broker: str, backend: str, prefix: str = "") -> Celery:
    options = {"global_keyprefix": prefix} if prefix else {}
    app = Celery(
        "driver-errors",
        broker=broker,
        backend=backend,
        broker_transport_options=options,
        result_backend_transport_options=options,
    )
    app.conf.task_default_queue = f"driver-errors-{uuid.uuid4().hex[:12]}"

    @app.task(name="driver_errors.noop")
    def noop() -> None:
        return None

    return app


def _is_wrapped(error: BaseException, server: str) -> None:
    """``error`` is celeriac's, names ``server`` and has the driver's error as its cause."""
    assert isinstance(error, CeleriacError), repr(error)
    assert server in str(error), str(error)
    assert PASSWORD not in str(error)
    assert error.__cause__ is not None and not isinstance(error.__cause__, CeleriacError)


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    prefix = f"celeriac-driver-errors-{uuid.uuid4().hex}:"
    yield prefix
    delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)


@pytest.fixture
def shared(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_BROKER)
    yield client
    client.close()


@pytest.fixture
async def app(prefix: str) -> AsyncIterator[Celery]:
    app = _app(redis_url(REDIS_DB_BROKER), redis_url(REDIS_DB_RESULTS), prefix)
    async with app.setup():
        yield app


async def test_delay_onto_a_queue_key_of_another_type_raises_broker_error(
    app: Celery, prefix: str, shared: redis.Redis
) -> None:
    queue = app.conf.task_default_queue
    await app.send_task("driver_errors.noop")  # binds the queue: later sends take the fast path
    key = prefix + kombu.list_key(queue, 0)
    shared.delete(key)
    shared.set(key, "not a list")
    with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
        await app.send_task("driver_errors.noop")  # publish_now: one LPUSH, sent at once
    _is_wrapped(caught.value, redis_url(REDIS_DB_BROKER))
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        await app.send_many("driver_errors.noop", [(), ()])  # a pipeline
    queue = f"{queue}-unbound"
    shared.set(prefix + kombu.list_key(queue, 0), "not a list")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        await app.send_task("driver_errors.noop", queue=queue)  # the pipeline that binds it


async def test_a_consumer_on_a_queue_key_of_another_type_raises_broker_error(
    app: Celery, prefix: str, shared: redis.Redis
) -> None:
    queue = app.conf.task_default_queue
    shared.set(prefix + kombu.list_key(queue, 0), "not a list")
    broker = (await app.connection()).broker
    with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
        async for _ in broker.consume([queue], prefetch=1):
            pass
    _is_wrapped(caught.value, redis_url(REDIS_DB_BROKER))


async def test_admin_calls_on_keys_of_another_type_raise_broker_error(
    app: Celery, prefix: str, shared: redis.Redis
) -> None:
    queue = app.conf.task_default_queue
    broker = (await app.connection()).broker
    shared.set(prefix + "unacked", "not a hash")
    shared.set(prefix + "celeriac.dead", "not a list")
    shared.set(prefix + kombu.list_key(queue, 0), "not a list")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "queue_sizes": lambda: broker.queue_sizes([queue]),
        "dead_letters": broker.dead_letters,
        "dead_letter_count": broker.dead_letter_count,
        "purge": lambda: broker.purge(queue),
    }
    for name, call in calls.items():
        with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
            await call()
        _is_wrapped(caught.value, redis_url(REDIS_DB_BROKER))
        assert not isinstance(caught.value, BrokerUnreachable), name


async def test_get_of_a_result_key_of_another_type_raises_broker_error(
    app: Celery, prefix: str
) -> None:
    task_id = str(uuid.uuid4())
    results = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_RESULTS)
    try:
        results.rpush(f"{prefix}celery-task-meta-{task_id}", "not a string")
    finally:
        results.close()
    result: AsyncResult[None] = AsyncResult(task_id, app)
    with pytest.raises(BrokerError, match="WRONGTYPE") as caught:
        await result.get(timeout=10)
    _is_wrapped(caught.value, redis_url(REDIS_DB_RESULTS))
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        await result.refresh()


async def test_an_unreachable_redis_raises_unreachable_errors() -> None:
    nowhere = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}"
    app = _app(f"{nowhere}/0", f"{nowhere}/1")
    async with app.setup():
        broker = (await app.connection()).broker
        calls = (broker.queue_sizes, broker.dead_letters, lambda: broker.purge("celery"))
        for call in calls:
            with pytest.raises(BrokerUnreachable) as caught:
                await call()
            _is_wrapped(caught.value, f"127.0.0.1:{nowhere.rsplit(':', 1)[1]}")
        with pytest.raises(BrokerUnreachable):
            await app.send_task("driver_errors.noop")
        with pytest.raises(BackendUnreachable) as unreachable:
            await AsyncResult(str(uuid.uuid4()), app).refresh()
        _is_wrapped(unreachable.value, ":***@127.0.0.1")


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, options=["--requirepass", PASSWORD])
    server.client = redis.Redis(port=server.port, password=PASSWORD, socket_connect_timeout=1)
    server.start()
    yield server
    server.close()


async def test_a_redis_that_wants_a_password_it_was_not_given_raises_broker_error(
    private: PrivateRedis,
) -> None:
    app = _app(private.url(0), private.url(1))
    async with app.setup():
        broker = (await app.connection()).broker
        with pytest.raises(BrokerError, match="NOAUTH") as caught:
            await broker.ping()
        _is_wrapped(caught.value, private.url(0))
        assert "password" in str(caught.value)  # the fix
        with pytest.raises(BrokerError, match="NOAUTH"):
            await app.send_task("driver_errors.noop")
        with pytest.raises(ConfigurationError, match="NOAUTH"):  # refused its SELECT 1
            await AsyncResult(str(uuid.uuid4()), app).refresh()
    app = _app(private.url(0), private.url(0))
    async with app.setup():
        with pytest.raises(BrokerError, match="NOAUTH") as caught:
            await AsyncResult(str(uuid.uuid4()), app).refresh()
        _is_wrapped(caught.value, private.url(0))


async def test_a_wrong_password_is_a_configuration_error_that_hides_it(
    private: PrivateRedis,
) -> None:
    url = private.url(0).replace("redis://", f"redis://:{PASSWORD}-wrong@")
    app = _app(url, url)
    async with app.setup():
        with pytest.raises(ConfigurationError, match="password") as caught:
            await app.send_task("driver_errors.noop")
        assert PASSWORD not in str(caught.value)
        with pytest.raises(ConfigurationError):
            await AsyncResult(str(uuid.uuid4()), app).refresh()
