"""Direct broadcasts on Redis keep kombu's layout, so Celery's remote-control replies meet
celeriac's: a subscription binds its reply queue as kombu 5.7 does (the binding member and the
exchange's deadline) and unbinds it on close; a reply kombu's pidbox sends (``Node.reply``'s
``_publish_reply``) reaches a celeriac subscription; a celeriac broadcast reaches a Celery
client's reply queue (``Mailbox._collect``). Each test keeps its keys under a
``global_keyprefix`` of its own on the shared Redis (DB 14), deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from kombu.common import maybe_declare
from kombu.pidbox import Mailbox

from celeriac.errors import BrokerUnreachable
from celeriac.protocol.envelope import Envelope
from celeriac.transports.redis.broker import RedisBroker
from services import (
    REDIS_DB_BROKER,
    REDIS_HOST,
    REDIS_PORT,
    delete_prefixed,
    redis_url,
    require_redis,
)

from .private_redis import PrivateRedis

pytestmark = pytest.mark.integration

WAIT = 10.0
REPLIES = "reply.celery.pidbox"  # Celery's reply exchange (control_exchange "celery")
SEP = "\x06\x16"
HOUR_MS = 3_600_000


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    name = f"celeriac-test-{uuid.uuid4().hex}:"
    yield name
    delete_prefixed(name, REDIS_DB_BROKER)


@pytest.fixture
def peek() -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_BROKER)
    yield client
    client.close()


@pytest.fixture
async def broker(prefix: str) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_url(REDIS_DB_BROKER), options={"global_keyprefix": prefix})
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
def connection(prefix: str) -> Iterator[kombu.Connection]:
    """A kombu connection to the same database and prefix, as a Celery app would have."""
    with kombu.Connection(
        redis_url(REDIS_DB_BROKER), transport_options={"global_keyprefix": prefix}
    ) as connection:
        yield connection


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def reply(body: Any, **headers: Any) -> Envelope:
    return Envelope(json.dumps(body).encode(), "application/json", "utf-8", headers, {})


class _Monitor:
    """Redis MONITOR in a thread: the commands run on the test's database under its prefix."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._client = redis.Redis(
            host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB_BROKER, socket_timeout=0.2
        )
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Monitor:
        self._thread.start()
        assert self._started.wait(WAIT)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._client.close()

    def _run(self) -> None:
        with self._client.monitor() as monitor:  # entered: Redis answered MONITOR
            self._started.set()
            while not self._stop.is_set():
                try:
                    entry = monitor.next_command()
                except redis.TimeoutError:
                    continue
                command = str(entry["command"])
                if entry["db"] == REDIS_DB_BROKER and self._prefix in command:
                    self.commands.append(command)


async def test_a_subscription_binds_its_reply_queue_as_kombu_and_unbinds_it_on_close(
    broker: RedisBroker, prefix: str, peek: redis.Redis
) -> None:
    oid = str(uuid.uuid4())
    queue = f"{oid}.{REPLIES}"
    member = f"{oid}{SEP}{SEP}{queue}".encode()
    table, deadlines = f"{prefix}_kombu.binding.{REPLIES}", f"{prefix}_kombu.binding_deadlines"
    before = server_ms(peek)
    subscription = await broker.subscribe(REPLIES, routing_key=oid, kind="direct").open()
    after = server_ms(peek)
    assert peek.smembers(table) == {member}
    deadline = peek.zscore(deadlines, REPLIES)
    assert deadline is not None and before + HOUR_MS <= deadline <= after + HOUR_MS
    peek.sadd(f"{prefix}_kombu.binding_permanent.{REPLIES}", member)  # as a durable queue's
    # As MONITOR shows them (control characters escaped): kombu's four priority lists.
    lists = [queue, *(f"{queue}\\x06\\x16{step}" for step in (3, 6, 9))]
    with _Monitor(prefix) as monitor:
        await subscription.close()
    assert peek.smembers(table) == set()
    assert peek.exists(f"{prefix}_kombu.binding_permanent.{REPLIES}") == 0
    deleted = [c for c in monitor.commands if c.startswith("DEL ")]
    assert len(deleted) == 1
    assert deleted[0].split()[1:] == [f"{prefix}{name}" for name in lists]


async def test_a_direct_broadcast_is_pushed_as_kombu_pushes_a_reply(
    broker: RedisBroker, prefix: str, peek: redis.Redis
) -> None:
    """Onto the bare list of each queue bound with the routing key, none other."""
    oid, other = str(uuid.uuid4()), str(uuid.uuid4())
    table = f"{prefix}_kombu.binding.{REPLIES}"
    peek.sadd(table, f"{oid}{SEP}{SEP}q-mine", f"{other}{SEP}{SEP}q-other")
    sent = reply({"w1@test": {"ok": "pong"}}, ticket="t-1", clock=3)
    await broker.broadcast(REPLIES, sent, oid, kind="direct")
    await broker.broadcast(REPLIES, sent, "bound-to-nothing", kind="direct")
    assert peek.llen(f"{prefix}q-other") == 0
    (raw,) = peek.lrange(f"{prefix}q-mine", 0, -1)
    document = json.loads(raw)
    assert document["headers"] == {"ticket": "t-1", "clock": 3}
    properties = document["properties"]
    assert properties["delivery_info"] == {"exchange": REPLIES, "routing_key": oid}
    assert (properties["delivery_mode"], properties["priority"]) == (1, 0)
    assert properties["body_encoding"] == "base64"
    assert sorted(k for k in peek.scan_iter(match=f"{prefix}*")) == sorted(
        [table.encode(), f"{prefix}q-mine".encode()]
    )


async def test_a_celery_workers_reply_reaches_a_subscription(
    broker: RedisBroker, connection: kombu.Connection
) -> None:
    """The reply as a Celery worker sends it: ``Node.reply`` -> ``Mailbox._publish_reply``."""
    mailbox = Mailbox("celery", type="fanout", accept=["json"])(connection)
    oid, ticket = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"w1@test": {"ok": "pong"}}
    async with broker.subscribe(REPLIES, routing_key=oid, kind="direct") as replies:
        await asyncio.to_thread(mailbox._publish_reply, body, REPLIES, oid, ticket)
        envelope = await asyncio.wait_for(anext(replies), WAIT)
    assert json.loads(envelope.body) == body
    assert envelope.headers["ticket"] == ticket and "clock" in envelope.headers
    assert envelope.properties.get("delivery_mode") == 1


async def test_a_broadcast_reaches_a_celery_clients_reply_queue(
    broker: RedisBroker, connection: kombu.Connection
) -> None:
    """As a Celery client collects replies: its reply queue declared (bound), then
    ``Mailbox._collect`` by ticket."""
    mailbox = Mailbox("celery", type="fanout", accept=["json"])(connection)
    ticket = str(uuid.uuid4())
    body = {"w1@test": {"ok": "pong"}}
    await asyncio.to_thread(maybe_declare, mailbox.reply_queue(connection.default_channel))
    started = time.monotonic()
    await broker.broadcast(REPLIES, reply(body, ticket=ticket, clock=9), mailbox.oid, kind="direct")
    replies = await asyncio.to_thread(mailbox._collect, ticket, limit=1, timeout=WAIT)
    assert replies == [body]
    assert time.monotonic() - started < WAIT  # came, rather than the collection timing out


async def test_a_subscription_whose_connection_is_lost_fails(tmp_path: Path) -> None:
    """On a server of the test's own, whose clients it kills, as a restart would."""
    private = PrivateRedis(tmp_path)
    private.start()
    try:
        broker = RedisBroker(private.url(1))
        await broker.connect()
        try:
            subscription = broker.subscribe(REPLIES, routing_key="inbox", kind="direct")
            async with subscription as replies:
                await asyncio.to_thread(private.client.client_kill_filter, _type="normal")
                with pytest.raises(BrokerUnreachable, match="subscribe again"):
                    await asyncio.wait_for(anext(replies), WAIT)
        finally:
            await asyncio.wait_for(broker.close(), WAIT)
    finally:
        private.close()
