"""The floor under celeriac's RabbitMQ figures: the AMQP client alone, with no task queue.

celeriac speaks AMQP through aiormq (a well-kept client, as its requirements ask), and so does
aio-celery. This measures what aiormq itself costs, with celeriac's own messages (a Celery
task message: twenty headers, a small JSON body) on the same RabbitMQ:

- ``publish``: ``basic_publish`` with publisher confirms, 100 in flight, as celeriac's
  publisher and the shared harness's enqueue phase run it;
- ``consume``: one consumer with a prefetch of 400 (celeriac's window at ``-c 100``) that
  acks each delivery as it arrives and does nothing else: a worker whose tasks cost
  nothing could drain no faster than this.

- ``confirm``: one persistent publish at a time, each awaiting its confirm. RabbitMQ
  confirms a persistent message on a durable queue once it has written it to disk (with a
  consumer that acks at once too, in measurements here), so a round trip that starts with
  a confirmed publish (``await task.delay()``) takes at least this.

It prints tasks/s and this process's CPU per message for the first two, the confirm's p50
for the last, so the figures can be set beside celeriac's (``bench/drain.py --broker
amqp``, the shared harness):

    .venv/bin/python bench/amqp_floor.py [--n 20000]

A queue of its own on the default vhost, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiormq
from _local import AMQP_URL, Completions, delete_amqp_queue, loop_factory, own_queue

from celeriac.protocol.message import build_task_message
from celeriac.transports.amqp.broker import to_properties


async def publish(channel: aiormq.abc.AbstractChannel, queue: str, n: int) -> float:
    envelope = build_task_message("floor.noop", "0" * 36, [], {})
    properties = to_properties(envelope, 0, dict(envelope.headers))
    slots = asyncio.Semaphore(100)

    async def one() -> None:
        async with slots:
            await channel.basic_publish(envelope.body, routing_key=queue, properties=properties)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - started)


async def confirm_latency(channel: aiormq.abc.AbstractChannel, queue: str, n: int) -> float:
    envelope = build_task_message("floor.noop", "0" * 36, [], {})
    properties = to_properties(envelope, 0, dict(envelope.headers))
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        await channel.basic_publish(envelope.body, routing_key=queue, properties=properties)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


async def consume(channel: aiormq.abc.AbstractChannel, queue: str, n: int) -> float:
    completions = Completions(n)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        await channel.basic_ack(message.delivery_tag)  # type: ignore[arg-type]
        completions.mark()

    await channel.basic_qos(prefetch_count=400)
    await channel.basic_consume(queue, on_message)
    await asyncio.wait_for(completions.done.wait(), 300)
    return completions.rate()


async def main(n: int) -> None:
    queue = own_queue("amqp-floor")
    confirmed = own_queue("amqp-floor-confirm")
    connection = await aiormq.connect(AMQP_URL)
    try:
        publishing = await connection.channel(publisher_confirms=True)
        await publishing.queue_declare(queue, durable=True)
        cpu = time.process_time()
        rate = await publish(publishing, queue, n)
        print(
            f"aiormq publish with confirms: {rate:,.0f} messages/s,"
            f" {(time.process_time() - cpu) / n * 1e6:.0f} us of CPU per message"
        )
        consuming = await connection.channel()
        cpu = time.process_time()
        rate = await consume(consuming, queue, n)
        print(
            f"aiormq consume + ack, nothing else: {rate:,.0f} messages/s,"
            f" {(time.process_time() - cpu) / n * 1e6:.0f} us of CPU per message"
        )
        await publishing.queue_declare(confirmed, durable=True)
        p50 = await confirm_latency(publishing, confirmed, 500)
        print(f"aiormq publish, one at a time, persistent: confirm p50 {p50 * 1e3:.2f} ms")
    finally:
        await connection.close()
        await delete_amqp_queue(queue)
        await delete_amqp_queue(confirmed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main(parser.parse_args().n))
