"""What the AMQP broker tells users when RabbitMQ is not as they configured it: a queue
declared with other arguments, a refused login, nothing listening."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import aiormq
import pytest

from celeriac.errors import BrokerError, ConfigurationError
from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp.broker import AmqpBroker
from services import AMQP_HOST, AMQP_PORT, amqp_vhost_url, delete_amqp_queues, free_port

pytestmark = pytest.mark.integration


def envelope() -> Envelope:
    return Envelope(b"[[], {}, {}]", "application/json", "utf-8", {"task": "t", "id": "1"}, {})


async def test_a_queue_declared_with_another_max_priority_names_the_argument_and_the_fix(
    amqp_vhost: str,
) -> None:
    url = amqp_vhost_url(amqp_vhost)
    queue = f"declared-{uuid.uuid4().hex}"
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(queue, durable=True, arguments={"x-max-priority": 5})
        broker = AmqpBroker(url, queue_max_priority=9)
        await broker.connect()
        try:
            with pytest.raises(ConfigurationError) as info:
                await broker.publish(queue, envelope())
        finally:
            await broker.close()
        text = str(info.value)
        assert f"queue {queue!r} already exists with a different 'x-max-priority'" in text
        assert "task_queue_max_priority" in text and "rabbitmqctl delete_queue" in text

        plain = AmqpBroker(url)  # no priority configured at all: the same mismatch
        await plain.connect()
        try:
            with pytest.raises(ConfigurationError, match="x-max-priority"):
                await plain.publish(queue, envelope())
        finally:
            await plain.close()
    finally:
        await (await connection.channel()).queue_delete(queue)
        await connection.close()


async def test_a_refused_login_is_a_configuration_error(amqp_vhost: str) -> None:
    broker = AmqpBroker(f"amqp://guest:wrong-password@{AMQP_HOST}:{AMQP_PORT}/{amqp_vhost}")
    with pytest.raises(ConfigurationError, match=r"refused the login.*user and password"):
        await broker.connect()


async def test_nothing_listening_is_a_broker_error_that_says_so() -> None:
    broker = AmqpBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    with pytest.raises(BrokerError, match=r"unreachable.*check that it runs"):
        await broker.connect()


async def test_rabbitmq_tasks_with_results_in_an_sqlite_file(
    amqp_vhost: str, tmp_path: Path
) -> None:
    """The broker and the result store are independent: AMQP + the embedded store."""
    from celeriac import Celery
    from inprocess import run_worker

    queue = f"sqlite-results-{uuid.uuid4().hex}"
    app = Celery(
        "combo",
        broker=amqp_vhost_url(amqp_vhost),
        backend=f"sqlite:///{tmp_path / 'results.db'}",
        task_default_queue=queue,
    )

    @app.task(name="combo.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async def work() -> list[int]:
        sent = [await add.delay(i, i) for i in range(20)]
        return [await r.get(timeout=20) for r in sent]

    try:
        assert await run_worker(app, work) == [2 * i for i in range(20)]
        assert (tmp_path / "results.db").exists()
    finally:
        await delete_amqp_queues([queue], amqp_vhost_url(amqp_vhost))


async def test_a_consumer_whose_connection_is_closed_by_rabbitmq_reconnects_and_loses_nothing(
    amqp_vhost: str,
) -> None:
    """RabbitMQ drops the connection (as on a restart): a delivery held then comes back,
    redelivered, to the same consumer once it has reconnected; settling the stale one does
    nothing; new messages keep arriving."""
    url = amqp_vhost_url(amqp_vhost)
    queue = f"reconnect-{uuid.uuid4().hex}"
    consumer, producer = AmqpBroker(url), AmqpBroker(url)
    await consumer.connect()
    await producer.connect()
    try:
        await producer.publish(queue, envelope())
        deliveries = consumer.consume([queue], prefetch=1)
        held = await anext(deliveries)
        assert not held.redelivered
        closed = _close_connections(amqp_vhost)
        assert closed >= 1
        again = await asyncio.wait_for(anext(deliveries), 30)
        assert again.redelivered and again.envelope.body == held.envelope.body
        await consumer.ack(held)  # on the channel that is gone: does nothing
        await consumer.ack(again)
        await producer.publish(queue, envelope())
        after = await asyncio.wait_for(anext(deliveries), 30)
        await consumer.ack(after)
        await deliveries.aclose()
        assert await producer.queue_sizes([queue]) == {}
    finally:
        await consumer.close()
        await producer.close()
        await delete_amqp_queues([queue], url)


def _close_connections(vhost: str) -> int:
    """Close every client connection of the tests' vhost from RabbitMQ's side."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "-p", vhost, "pid"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pids = [line.strip() for line in listed.stdout.splitlines() if line.strip().startswith("<")]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "close_connection", pid, "test: as if RabbitMQ restarted"],
            capture_output=True,
            timeout=60,
        )
    return len(pids)


@pytest.mark.parametrize("value", [0, -5])
def test_a_consumer_timeout_that_is_not_a_positive_number_of_seconds_says_so(
    value: object,
) -> None:
    with pytest.raises(BrokerError, match=r"consumer_timeout.*in seconds"):
        AmqpBroker("amqp://guest:guest@127.0.0.1//", options={"consumer_timeout": value})


def test_a_consumer_timeout_that_is_not_a_number_is_a_configuration_error() -> None:
    """Checked with every option's type, as on every transport."""
    with pytest.raises(ConfigurationError, match=r"'consumer_timeout' must be a number, not str"):
        AmqpBroker("amqp://guest:guest@127.0.0.1//", options={"consumer_timeout": "soon"})
