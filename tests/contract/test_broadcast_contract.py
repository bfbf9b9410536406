"""What every broker promises about broadcasts (``Broker.broadcast`` / ``Broker.subscribe``);
runs once per transport (see conftest.BROKERS)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import Broker, Subscription, topic_matcher

from .conftest import MakeBroker

WAIT = 5.0  # generous bound on anything that should happen "now"


@pytest.fixture
def exchange() -> str:
    """An exchange name no other test uses."""
    return f"celeriac-test-{uuid.uuid4().hex}"


def envelope(body: str, **headers: object) -> Envelope:
    return Envelope(body.encode(), "application/json", "utf-8", dict(headers), {"delivery_mode": 1})


def message(env: Envelope) -> Envelope:
    """``env`` without the properties that are the transport's to set."""
    properties = {k: v for k, v in env.properties.items() if k not in ("priority", "delivery_mode")}
    return Envelope(env.body, env.content_type, env.content_encoding, env.headers, properties)


async def receive(messages: AsyncIterator[Envelope]) -> Envelope:
    return await asyncio.wait_for(anext(messages), WAIT)


async def bodies(messages: AsyncIterator[Envelope], until: bytes) -> list[bytes]:
    """Bodies received up to and including ``until`` (broadcasts arrive in order)."""
    seen: list[bytes] = []
    while not seen or seen[-1] != until:
        seen.append((await receive(messages)).body)
    return seen


async def test_every_subscriber_gets_each_broadcast(make_broker: MakeBroker, exchange: str) -> None:
    sender, first, second = await make_broker(), await make_broker(), await make_broker()
    sent = Envelope(
        b'{"method": "ping"}',
        "application/json",
        "utf-8",
        {"clock": 1, "expires": 1796298819},
        {"reply_to": "abc", "correlation_id": "xyz"},
    )
    async with first.subscribe(exchange) as one, second.subscribe(exchange) as other:
        await sender.broadcast(exchange, sent)
        assert message(await receive(one)) == message(sent)
        assert message(await receive(other)) == message(sent)


async def test_a_broadcast_before_subscribing_is_not_kept(
    make_broker: MakeBroker, exchange: str
) -> None:
    sender, receiver = await make_broker(), await make_broker()
    await sender.broadcast(exchange, envelope("early"))
    async with receiver.subscribe(exchange) as messages:
        await sender.broadcast(exchange, envelope("on time"))
        assert (await receive(messages)).body == b"on time"


async def test_many_broadcasts_arrive_in_order(broker: Broker, exchange: str) -> None:
    async with broker.subscribe(exchange) as messages:
        for i in range(50):
            await broker.broadcast(exchange, envelope(str(i)))
        assert await bodies(messages, b"49") == [str(i).encode() for i in range(50)]


async def test_exchanges_are_apart(broker: Broker, exchange: str) -> None:
    other = f"{exchange}-other"
    async with broker.subscribe(exchange) as messages, broker.subscribe(other) as others:
        await broker.broadcast(other, envelope("other"))
        await broker.broadcast(exchange, envelope("mine"))
        assert (await receive(messages)).body == b"mine"
        assert (await receive(others)).body == b"other"


async def test_topic_subscribers_pick_routing_keys_by_pattern(
    make_broker: MakeBroker, exchange: str
) -> None:
    sender, receiver = await make_broker(), await make_broker()
    keys = ["worker.heartbeat", "task.succeeded", "worker.elect.ack", "task.failed", "task"]
    last = "worker.succeeded"  # matches every pattern below: the end of each stream
    async with (
        receiver.subscribe(exchange, routing_key="worker.#", kind="topic") as workers,
        receiver.subscribe(exchange, routing_key="*.succeeded", kind="topic") as successes,
        receiver.subscribe(exchange, kind="topic") as everything,
    ):
        for key in [*keys, last]:
            await sender.broadcast(exchange, envelope(key), key, kind="topic")
        end = last.encode()
        assert await bodies(workers, end) == [b"worker.heartbeat", b"worker.elect.ack", end]
        assert await bodies(successes, end) == [b"task.succeeded", end]
        assert await bodies(everything, end) == [k.encode() for k in [*keys, last]]


async def test_fanout_ignores_routing_keys(broker: Broker, exchange: str) -> None:
    async with broker.subscribe(exchange, routing_key="no.such.key") as messages:
        await broker.broadcast(exchange, envelope("for all"), "some.key")
        await broker.broadcast(exchange, envelope("no key"))
        assert await bodies(messages, b"no key") == [b"for all", b"no key"]


async def test_a_direct_broadcast_reaches_only_its_routing_key(
    make_broker: MakeBroker, exchange: str
) -> None:
    """As Celery's replies on ``reply.celery.pidbox``: each inbox gets its own key's."""
    sender, receiver = await make_broker(), await make_broker()
    async with (
        receiver.subscribe(exchange, routing_key="inbox-a", kind="direct") as a,
        receiver.subscribe(exchange, routing_key="inbox-b", kind="direct") as b,
    ):
        await sender.broadcast(exchange, envelope("for a", ticket="t-a"), "inbox-a", kind="direct")
        await sender.broadcast(exchange, envelope("for b"), "inbox-b", kind="direct")
        await sender.broadcast(exchange, envelope("a again"), "inbox-a", kind="direct")
        first = await receive(a)
        assert message(first) == message(envelope("for a", ticket="t-a"))
        assert (await receive(b)).body == b"for b"  # "for a" came first, had b got it
        assert (await receive(a)).body == b"a again"  # nor did a get "for b"


async def test_a_direct_broadcast_nobody_is_bound_for_is_dropped(
    make_broker: MakeBroker, exchange: str
) -> None:
    sender, receiver = await make_broker(), await make_broker()
    await sender.broadcast(exchange, envelope("to nobody"), "nobody", kind="direct")
    async with receiver.subscribe(exchange, routing_key="someone", kind="direct") as messages:
        await sender.broadcast(exchange, envelope("still nobody"), "nobody", kind="direct")
        await sender.broadcast(exchange, envelope("someone"), "someone", kind="direct")
        assert (await receive(messages)).body == b"someone"


async def test_a_direct_broadcast_after_its_subscription_closed_is_not_kept(
    make_broker: MakeBroker, exchange: str
) -> None:
    sender, receiver = await make_broker(), await make_broker()
    async with receiver.subscribe(exchange, routing_key="inbox", kind="direct") as first:
        await sender.broadcast(exchange, envelope("while open"), "inbox", kind="direct")
        assert (await receive(first)).body == b"while open"
    await sender.broadcast(exchange, envelope("after close"), "inbox", kind="direct")
    async with receiver.subscribe(exchange, routing_key="inbox", kind="direct") as again:
        await sender.broadcast(exchange, envelope("reopened"), "inbox", kind="direct")
        assert (await receive(again)).body == b"reopened"


async def test_closing_ends_the_iteration(make_broker: MakeBroker, exchange: str) -> None:
    broker = await make_broker()
    subscription = await broker.subscribe(exchange).open()
    await broker.broadcast(exchange, envelope("before"))
    assert (await receive(subscription)).body == b"before"
    await subscription.close()
    await subscription.close()  # twice is fine
    with pytest.raises(StopAsyncIteration):
        await receive(subscription)
    # A broadcast to nobody is fine, and so is closing a broker with open subscriptions.
    await broker.broadcast(exchange, envelope("after"))
    open_one: Subscription = await broker.subscribe(exchange).open()
    await broker.close()
    assert open_one.closed
    with pytest.raises(StopAsyncIteration):
        await receive(open_one)


async def test_a_closed_subscription_gets_nothing_more(
    make_broker: MakeBroker, exchange: str
) -> None:
    broker = await make_broker()
    async with broker.subscribe(exchange) as staying:
        async with broker.subscribe(exchange) as leaving:
            pass
        await broker.broadcast(exchange, envelope("after"))
        assert (await receive(staying)).body == b"after"
    with pytest.raises(StopAsyncIteration):
        await receive(leaving)


async def test_bad_arguments_are_refused(broker: Broker, exchange: str) -> None:
    with pytest.raises(ValueError, match="exchange"):
        await broker.broadcast("", envelope("x"))
    with pytest.raises(ValueError, match="kind"):
        broker.subscribe(exchange, kind="headers")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("#", "", True),
        ("#", "a.b.c", True),
        ("*", "", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "ab", False),
        ("#.b", "b", True),
        ("#.b", "a.c.b", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.*.b", "a.b", False),
        ("worker.*", "worker.elect.ack", False),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_topic_patterns_match_as_amqp_does(pattern: str, key: str, matches: bool) -> None:
    assert topic_matcher(pattern)(key) is matches
