"""What every broker transport promises; runs once per transport (see conftest.BROKERS)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest

from celeriac.errors import MessageTooLarge
from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import Broker, Delivery, PublishRequest, now

from .conftest import MakeBroker

WAIT = 5.0  # generous bound on anything that should happen "now"


def envelope(body: bytes | str, **headers: Any) -> Envelope:
    data = body.encode() if isinstance(body, str) else body
    return Envelope(data, "application/json", "utf-8", dict(headers), {"delivery_mode": 2})


def message(env: Envelope) -> Envelope:
    """``env`` without the properties that are the transport's to set: ``priority``, and
    ``delivery_mode`` (AMQP publishes every message persistent)."""
    properties = {k: v for k, v in env.properties.items() if k not in ("priority", "delivery_mode")}
    return Envelope(env.body, env.content_type, env.content_encoding, env.headers, properties)


@contextlib.asynccontextmanager
async def consuming(
    broker: Broker, queues: Sequence[str], prefetch: int = 1
) -> AsyncIterator[AsyncGenerator[Delivery, None]]:
    it = broker.consume(queues, prefetch=prefetch)
    try:
        yield it
    finally:
        await it.aclose()


async def receive(it: AsyncIterator[Delivery], timeout: float = WAIT) -> Delivery:
    return await asyncio.wait_for(anext(it), timeout)


async def drain(broker: Broker, it: AsyncIterator[Delivery], count: int) -> list[bytes]:
    bodies = []
    for _ in range(count):
        delivery = await receive(it)
        bodies.append(delivery.envelope.body)
        await broker.ack(delivery)
    return bodies


async def test_publish_consume_ack(broker: Broker, queue: str) -> None:
    sent = Envelope(
        b"\x00\xff[1, 2]",
        "application/json",
        "utf-8",
        {"task": "tasks.add", "id": "abc", "retries": 0, "eta": None},
        {"correlation_id": "abc", "priority": 3},
    )
    await broker.publish(queue, sent, priority=3)
    async with consuming(broker, [queue]) as it:
        delivery = await receive(it)
        assert message(delivery.envelope) == message(sent)
        assert (delivery.queue, delivery.priority, delivery.redelivered) == (queue, 3, False)
        await broker.ack(delivery)
    assert queue not in await broker.queue_sizes()


async def test_fifo_within_a_priority(broker: Broker, queue: str) -> None:
    await broker.publish_many([PublishRequest(queue, envelope(str(i)), 4) for i in range(6)])
    async with consuming(broker, [queue]) as it:
        assert await drain(broker, it, 6) == [str(i).encode() for i in range(6)]


@pytest.mark.parametrize("prefetch", [1, 10])
async def test_higher_priority_first(broker: Broker, queue: str, prefetch: int) -> None:
    for priority, body in [(0, "a"), (5, "b"), (9, "c"), (5, "d"), (0, "e")]:
        await broker.publish(queue, envelope(body), priority=priority)
    async with consuming(broker, [queue], prefetch) as it:
        assert await drain(broker, it, 5) == [b"c", b"b", b"d", b"a", b"e"]


async def test_prefetch_window(make_broker: MakeBroker, queue: str) -> None:
    broker = await make_broker()
    for i in range(4):
        await broker.publish(queue, envelope(f"m{i}"))
    async with consuming(broker, [queue], 2) as first, consuming(broker, [queue], 1) as second:
        a, b = await receive(first), await receive(first)
        # The first consumer holds exactly its window: the next message is still free.
        c = await receive(second)
        assert [a.envelope.body, b.envelope.body, c.envelope.body] == [b"m0", b"m1", b"m2"]
        await broker.ack(a)
        d = await receive(first)
        assert d.envelope.body == b"m3"
        for delivery in (b, c, d):
            await broker.ack(delivery)
    assert queue not in await broker.queue_sizes()


async def test_requeue_redelivers(broker: Broker, queue: str) -> None:
    await broker.publish(queue, envelope("again"))
    async with consuming(broker, [queue]) as it:
        first = await receive(it)
        assert not first.redelivered
        await broker.requeue(first)
        second = await receive(it)
        assert (second.envelope.body, second.redelivered) == (b"again", True)
        await broker.ack(second)


async def test_defer_hides_until_eta(broker: Broker, queue: str) -> None:
    await broker.publish(queue, envelope("later"))
    async with consuming(broker, [queue]) as it:
        delivery = await receive(it)
        eta = now() + 0.3
        await broker.defer(delivery, eta)
        again = await receive(it)
        arrived = now()
        assert again.envelope.body == b"later"
        assert eta <= arrived < eta + 0.25
        await broker.ack(again)


async def test_publish_with_eta(broker: Broker, queue: str) -> None:
    eta = now() + 0.3
    await broker.publish(queue, envelope("eta"), eta=eta)
    await broker.publish(queue, envelope("now"))
    async with consuming(broker, [queue], prefetch=5) as it:
        if broker.hides_eta:
            first = await receive(it)
            assert first.envelope.body == b"now"
        else:  # delivered at once, like Celery's; the consumer parks it until its eta
            early = await receive(it)
            assert early.envelope.body == b"eta"
            await broker.defer(early, eta)
            first = await receive(it)
            assert first.envelope.body == b"now"
        second = await receive(it)
        arrived = now()
        assert second.envelope.body == b"eta"
        assert eta <= arrived < eta + 0.25
        await broker.ack(first)
        await broker.ack(second)


async def test_dead_letter_keeps_reason_and_never_redelivers(broker: Broker, queue: str) -> None:
    before = await broker.dead_letter_count()
    await broker.publish(queue, envelope("poison", id="p1"))
    async with consuming(broker, [queue]) as it:
        await broker.dead_letter(await receive(it), "ValueError: cannot parse")
        await broker.publish(queue, envelope("sentinel"))
        # FIFO would hand out the poison message first if it were still in the queue.
        assert await drain(broker, it, 1) == [b"sentinel"]
    assert await broker.dead_letter_count() == before + 1
    newest = (await broker.dead_letters(limit=1))[0]
    assert (newest.queue, newest.reason) == (queue, "ValueError: cannot parse")
    assert message(newest.envelope) == message(envelope("poison", id="p1"))
    assert newest.died_at <= now()
    assert queue not in await broker.queue_sizes()


async def test_dead_letters_newest_first(broker: Broker, queue: str) -> None:
    for i in range(3):
        await broker.publish(queue, envelope(f"d{i}"))
    async with consuming(broker, [queue]) as it:
        for i in range(3):
            await broker.dead_letter(await receive(it), f"reason {i}")
    letters = await broker.dead_letters(limit=2)
    assert [letter.reason for letter in letters] == ["reason 2", "reason 1"]


async def test_purge_deletes_waiting_not_held(broker: Broker, queue: str) -> None:
    assert await broker.purge(queue) == 0
    for i in range(3):
        await broker.publish(queue, envelope(f"p{i}"), eta=now() + 60 if i == 2 else None)
    async with consuming(broker, [queue]) as it:
        held = await receive(it)
        assert await broker.purge(queue) == 2
        assert (await broker.queue_sizes())[queue] == 1
        await broker.ack(held)
    assert queue not in await broker.queue_sizes()


async def test_queue_sizes_count_waiting_and_held(broker: Broker, queue: str) -> None:
    other = queue + "-other"
    await broker.publish_many(
        [
            PublishRequest(queue, envelope("a")),
            PublishRequest(queue, envelope("b"), eta=now() + 60),
            PublishRequest(other, envelope("c")),
        ]
    )
    async with consuming(broker, [queue]) as it:
        held = await receive(it)
        sizes = await broker.queue_sizes()
        assert (sizes[queue], sizes[other]) == (2, 1)
        await broker.ack(held)
    assert (await broker.purge(queue), await broker.purge(other)) == (1, 1)
    sizes = await broker.queue_sizes()
    assert queue not in sizes and other not in sizes


async def test_close_gives_back_unsettled(make_broker: MakeBroker, queue: str) -> None:
    worker, other = await make_broker(), await make_broker()
    await worker.publish_many([PublishRequest(queue, envelope(f"u{i}")) for i in range(2)])
    it = worker.consume([queue], prefetch=2)
    taken = await receive(it)
    await worker.close()
    await it.aclose()
    async with consuming(other, [queue], prefetch=2) as it2:
        back = {}
        for _ in range(2):
            delivery = await receive(it2)
            back[delivery.envelope.body] = delivery
            await other.ack(delivery)
    assert set(back) == {b"u0", b"u1"}
    assert back[taken.envelope.body].redelivered


async def test_closing_the_iterator_gives_back_what_it_did_not_yield(
    broker: Broker, queue: str
) -> None:
    await broker.publish_many([PublishRequest(queue, envelope(f"y{i}")) for i in range(3)])
    async with consuming(broker, [queue], prefetch=3) as it:
        kept = await receive(it)
    async with consuming(broker, [queue], prefetch=3) as it:
        rest = [await receive(it) for _ in range(2)]
    assert [d.envelope.body for d in rest] == [b"y1", b"y2"]
    for delivery in [kept, *rest]:
        await broker.ack(delivery)
    assert queue not in await broker.queue_sizes()


async def test_cancelled_consumer_keeps_nothing(make_broker: MakeBroker, queue: str) -> None:
    first, second = await make_broker(), await make_broker()
    await first.publish(queue, envelope("c"))
    it = first.consume([queue], prefetch=5)
    pending = asyncio.ensure_future(anext(it))
    for _ in range(3):
        await asyncio.sleep(0)  # let the claim start, wherever it is when cancelled
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first.requeue(await pending)  # it won the race: put it back
    await it.aclose()
    async with consuming(second, [queue]) as it2:
        assert await drain(second, it2, 1) == [b"c"]


async def test_idle_consumer_wakes_on_publish(make_broker: MakeBroker, queue: str) -> None:
    consumer, producer = await make_broker(), await make_broker()
    async with consuming(consumer, [queue]) as it:
        waiting = asyncio.ensure_future(receive(it))
        await producer.publish(queue, envelope("wake"))
        delivery = await waiting
        assert delivery.envelope.body == b"wake"
        await consumer.ack(delivery)


async def test_several_queues_at_once(broker: Broker, queue: str) -> None:
    other = queue + "-2"
    await broker.publish(queue, envelope("a1"), priority=1)
    await broker.publish(other, envelope("b5"), priority=5)
    await broker.publish(queue, envelope("a5"), priority=5)
    await broker.publish(other, envelope("b1"), priority=1)
    async with consuming(broker, [queue, other]) as it:
        got = []
        for _ in range(4):
            delivery = await receive(it)
            got.append((delivery.queue, delivery.envelope.body))
            await broker.ack(delivery)
    # Priority first; across queues of one priority the order is the transport's.
    assert sorted(got[:2]) == sorted([(other, b"b5"), (queue, b"a5")])
    assert sorted(got[2:]) == sorted([(queue, b"a1"), (other, b"b1")])


async def test_max_message_size(make_broker: MakeBroker, queue: str) -> None:
    broker = await make_broker(max_message_size=10)
    with pytest.raises(MessageTooLarge):
        await broker.publish(queue, envelope(b"x" * 11))
    await broker.publish(queue, envelope(b"x" * 10))
    assert (await broker.queue_sizes())[queue] == 1


@pytest.mark.parametrize("priority", [-1, 10])
async def test_bad_priority(broker: Broker, queue: str, priority: int) -> None:
    with pytest.raises(ValueError, match="priority"):
        await broker.publish(queue, envelope("x"), priority=priority)
    with pytest.raises(ValueError, match="priority"):
        await broker.publish_many(
            [PublishRequest(queue, envelope("ok")), PublishRequest(queue, envelope("x"), priority)]
        )
    assert queue not in await broker.queue_sizes()


async def test_bad_consume_arguments(broker: Broker, queue: str) -> None:
    with pytest.raises(ValueError):
        await anext(broker.consume([queue], prefetch=0))
    with pytest.raises(ValueError):
        await anext(broker.consume([], prefetch=1))


async def test_concurrent_settlements(broker: Broker, queue: str) -> None:
    await broker.publish_many([PublishRequest(queue, envelope(f"c{i}")) for i in range(20)])
    async with consuming(broker, [queue], prefetch=20) as it:
        deliveries = [await receive(it) for _ in range(20)]
        await asyncio.gather(*(broker.ack(d) for d in deliveries[:15]))
        await asyncio.gather(
            broker.requeue(deliveries[15]),
            broker.defer(deliveries[16], now() + 60),
            broker.dead_letter(deliveries[17], "bad"),
            broker.ack(deliveries[18]),
            broker.ack(deliveries[19]),
        )
        again = await receive(it)
        assert (again.envelope.body, again.redelivered) == (b"c15", True)
        await broker.ack(again)
    assert (await broker.queue_sizes())[queue] == 1  # the deferred one
    assert await broker.purge(queue) == 1


async def test_many_acks_at_once(broker: Broker, queue: str) -> None:
    """More acks in one go than a batching transport puts in one statement."""
    count = 450
    await broker.publish_many([PublishRequest(queue, envelope(f"m{i}")) for i in range(count)])
    async with consuming(broker, [queue], prefetch=count) as it:
        deliveries = [await receive(it) for _ in range(count)]
        await asyncio.gather(*(broker.ack(d) for d in deliveries))
    assert (await broker.queue_sizes()).get(queue, 0) == 0


async def test_settling_twice_does_nothing(broker: Broker, queue: str) -> None:
    await broker.publish_many([PublishRequest(queue, envelope(f"s{i}")) for i in range(2)])
    async with consuming(broker, [queue], prefetch=2) as it:
        first, second = await receive(it), await receive(it)
        await broker.ack(first)
        await broker.ack(first)
        await broker.requeue(first)
        await broker.dead_letter(first, "late")
        await broker.defer(first, now())
        await broker.requeue(second)
        again = await receive(it)
        assert again.envelope.body == second.envelope.body
        await broker.ack(again)
    assert (await broker.queue_sizes()).get(queue, 0) == 0
    assert not [d for d in await broker.dead_letters() if d.reason == "late"]


async def test_publish_once_queues_each_sequence_of_a_key_once(broker: Broker, queue: str) -> None:
    """Where the transport can decide and publish in one step, a publish repeated with the
    same (or an older) sequence under a key queues nothing; RabbitMQ says it cannot."""
    key = f"once-{queue}"
    first = await broker.publish_once(queue, envelope("a"), key=key, sequence=1000)
    again = await broker.publish_once(queue, envelope("a again"), key=key, sequence=1000)
    older = await broker.publish_once(queue, envelope("older"), key=key, sequence=999)
    newer = await broker.publish_once(queue, envelope("b"), key=key, sequence=1001)
    other = await broker.publish_once(queue, envelope("c"), key=key + "-other", sequence=5)
    if broker.publishes_once:
        assert (first, again, older, newer, other) == (True, False, False, True, True)
        expected = [b"a", b"b", b"c"]
    else:
        assert (first, again, older, newer, other) == (True, True, True, True, True)
        expected = [b"a", b"a again", b"older", b"b", b"c"]
    async with consuming(broker, [queue], prefetch=10) as it:
        assert await drain(broker, it, len(expected)) == expected
    assert queue not in await broker.queue_sizes()
