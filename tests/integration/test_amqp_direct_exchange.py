"""Direct broadcasts on RabbitMQ meet Celery's remote-control replies: a subscription declares
its reply queue as a Celery client declares its own (exclusive, auto-deleted, kombu's
``x-expires`` and ``x-message-ttl``) and binds it to ``reply.celery.pidbox`` with its routing
key; a reply sent as a Celery worker sends it (``Mailbox._publish_reply``) reaches the
subscription, and a celeriac broadcast reaches a Celery client's reply queue
(``Mailbox._collect``). The tests run in the session's virtual host; reply queues are
exclusive, so none outlives its connection."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kombu
import pytest
from celery import Celery
from kombu.common import maybe_declare
from kombu.pidbox import Mailbox

from celeriac.protocol.envelope import Envelope
from celeriac.transports.amqp.broker import AmqpBroker
from services import amqp_vhost_url

pytestmark = pytest.mark.integration

WAIT = 10.0
REPLIES = "reply.celery.pidbox"


@pytest.fixture
async def broker(amqp_vhost: str) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(amqp_vhost_url(amqp_vhost))
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
def connection(amqp_vhost: str) -> Iterator[kombu.Connection]:
    with kombu.Connection(amqp_vhost_url(amqp_vhost)) as connection:
        yield connection


@pytest.fixture
def celery_app(amqp_vhost: str) -> Iterator[Celery]:
    """A Celery client of the virtual host, with Celery's remote-control defaults."""
    app = Celery("direct-test", broker=amqp_vhost_url(amqp_vhost), set_as_current=False)
    yield app
    app.close()


def rabbitmqctl(vhost: str, what: str, *columns: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["rabbitmqctl", what, "-p", vhost, "--quiet", "--formatter", "json", *columns],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


QUEUE_COLUMNS = ("name", "arguments", "exclusive", "auto_delete", "durable")


def queue_row(vhost: str, name: str) -> dict[str, Any] | None:
    rows = [r for r in rabbitmqctl(vhost, "list_queues", *QUEUE_COLUMNS) if r["name"] == name]
    return rows[0] if rows else None


def without_name(row: dict[str, Any] | None) -> dict[str, Any]:
    """A queue's declaration, its arguments by name and value (RabbitMQ tells every integer
    type apart, and takes them as equivalent when a queue is declared again)."""
    assert row is not None
    declaration = {k: v for k, v in row.items() if k != "name"}
    declaration["arguments"] = {name: value for name, _, value in row["arguments"]}
    return declaration


def reply(body: Any, **headers: Any) -> Envelope:
    return Envelope(json.dumps(body).encode(), "application/json", "utf-8", headers, {})


async def test_a_subscription_declares_its_reply_queue_as_a_celery_client_does(
    broker: AmqpBroker, celery_app: Celery, amqp_vhost: str
) -> None:
    oid = str(uuid.uuid4())
    queue = f"{oid}.{REPLIES}"
    with celery_app.connection_for_write() as connection:
        mailbox = celery_app.control.mailbox(connection)
        await asyncio.to_thread(maybe_declare, mailbox.reply_queue(connection.default_channel))
        celerys = await asyncio.to_thread(queue_row, amqp_vhost, f"{mailbox.oid}.{REPLIES}")
        async with broker.subscribe(REPLIES, routing_key=oid, kind="direct"):
            mine = await asyncio.to_thread(queue_row, amqp_vhost, queue)
            bindings = await asyncio.to_thread(
                rabbitmqctl,
                amqp_vhost,
                "list_bindings",
                "source_name",
                "destination_name",
                "routing_key",
            )
            exchanges = await asyncio.to_thread(
                rabbitmqctl,
                amqp_vhost,
                "list_exchanges",
                "name",
                "type",
                "durable",
                "auto_delete",
            )
    assert without_name(mine) == without_name(celerys)
    assert without_name(mine) == {
        "arguments": {"x-expires": 10000, "x-message-ttl": 300000},
        "exclusive": True,
        "auto_delete": True,
        "durable": False,
    }
    assert {"source_name": REPLIES, "destination_name": queue, "routing_key": oid} in bindings
    declared = [e for e in exchanges if e["name"] == REPLIES]
    assert declared == [{"name": REPLIES, "type": "direct", "durable": False, "auto_delete": False}]
    assert await asyncio.to_thread(queue_row, amqp_vhost, queue) is None  # deleted on close


async def test_a_celery_workers_reply_reaches_a_subscription(
    broker: AmqpBroker, connection: kombu.Connection
) -> None:
    """The reply as a Celery worker sends it: ``Node.reply`` -> ``Mailbox._publish_reply``
    (which declares the exchange with its own flags: a mismatch would close its channel)."""
    mailbox = Mailbox("celery", type="fanout", accept=["json"])(connection)
    oid, ticket = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"w1@test": {"ok": "pong"}}
    async with broker.subscribe(REPLIES, routing_key=oid, kind="direct") as replies:
        await asyncio.to_thread(mailbox._publish_reply, body, REPLIES, f"not-{oid}", "other")
        await asyncio.to_thread(mailbox._publish_reply, body, REPLIES, oid, ticket)
        envelope = await asyncio.wait_for(anext(replies), WAIT)
    assert json.loads(envelope.body) == body
    assert envelope.headers["ticket"] == ticket and "clock" in envelope.headers
    assert envelope.properties.get("delivery_mode") == 1


async def test_a_broadcast_reaches_a_celery_clients_reply_queue(
    broker: AmqpBroker, celery_app: Celery
) -> None:
    """As a Celery client collects replies: its reply queue declared, then
    ``Mailbox._collect`` by ticket."""
    ticket = str(uuid.uuid4())
    body = {"w1@test": {"ok": "pong"}}
    with celery_app.connection_for_write() as connection:
        mailbox = celery_app.control.mailbox(connection)
        await asyncio.to_thread(maybe_declare, mailbox.reply_queue(connection.default_channel))
        started = time.monotonic()
        sent = reply(body, ticket=ticket, clock=9)
        await broker.broadcast(REPLIES, sent, mailbox.oid, kind="direct")
        replies = await asyncio.to_thread(mailbox._collect, ticket, limit=1, timeout=WAIT)
    assert replies == [body]
    assert time.monotonic() - started < WAIT  # came, rather than the collection timing out
