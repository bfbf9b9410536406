"""The floor under a round trip on RabbitMQ with Redis results, with no task queue at all.

The round trip of the RabbitMQ target (``await (await task.delay()).get()``) on the shared harness's
``celeriac@amqp``: a persistent publish that waits for its confirm, a worker that consumes
it, stores a result in Redis and acks, and a client that reads that result. This does the
same with bare clients in two processes, so the figure is what any task queue built on
aiormq and Redis could reach on this machine:

- the client: aiormq, one persistent publish at a time to a durable queue, awaiting the
  publisher confirm; then it waits for the result's PUBLISH on a channel it subscribed to
  beforehand (redis-py with hiredis; the best case: no SUBSCRIBE or GET per call);
- the worker (uvloop, as celeriac's): aiormq with a prefetch of 400; on each delivery SET +
  PUBLISH in one pipeline, then the ack. ``--counter`` first adds what the harness's tasks
  do (one pipelined INCR + GET, like its completion counter).

It prints the p50 of the confirm and of the whole round trip:

    .venv/bin/python bench/amqp_rtt_floor.py [--n 2000] [--counter]

A queue of its own on the default vhost and keys under a prefix of its own in Redis DB 14,
all deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from multiprocessing.synchronize import Event

import aiormq
import redis.asyncio as aioredis
from _local import AMQP_URL, REDIS_URL, delete_amqp_queue, delete_prefixed, own_prefix, own_queue

from celeriac.protocol.message import build_task_message
from celeriac.transports.amqp.broker import to_properties

STOP = b"stop"


async def worker(queue: str, prefix: str, counter: bool, ready: Event) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    connection = await aiormq.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=400)
    stopped = asyncio.Event()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        task_id = message.header.properties.correlation_id or ""
        if message.body == STOP:
            stopped.set()
        else:
            if counter:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.incr(prefix + "counter")
                    pipe.get(prefix + "counter")
                    await pipe.execute()
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(prefix + task_id, message.body, ex=60)
                pipe.publish(prefix + "done", task_id)
                await pipe.execute()
        await channel.basic_ack(message.delivery_tag)  # type: ignore[arg-type]

    await channel.basic_consume(queue, on_message)
    ready.set()
    await stopped.wait()
    await connection.close()
    await client.aclose()


def run_worker(queue: str, prefix: str, counter: bool, ready: Event) -> None:
    import uvloop

    uvloop.run(worker(queue, prefix, counter, ready))


async def client(queue: str, prefix: str, n: int) -> tuple[list[float], list[float]]:
    redis = aioredis.Redis.from_url(REDIS_URL)
    pubsub = redis.pubsub()
    await pubsub.subscribe(prefix + "done")
    await pubsub.get_message(timeout=5)  # the confirmation
    connection = await aiormq.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    confirms, round_trips = [], []
    for i in range(n + 50):
        task_id = f"{i:036d}"
        envelope = build_task_message("floor.noop", task_id, [], {})
        properties = to_properties(envelope, 0, dict(envelope.headers))
        started = time.perf_counter()
        await channel.basic_publish(envelope.body, routing_key=queue, properties=properties)
        confirmed = time.perf_counter()
        while True:
            message = await pubsub.get_message(timeout=5)
            if message is None:
                raise SystemExit(f"no result for message {i} within 5 s: is the worker alive?")
            if message["data"] == task_id.encode():
                break
        if i >= 50:  # warm-up
            confirms.append(confirmed - started)
            round_trips.append(time.perf_counter() - started)
    await channel.basic_publish(STOP, routing_key=queue)
    await connection.close()
    await pubsub.aclose()
    await redis.aclose()
    return confirms, round_trips


async def declare(queue: str) -> None:
    connection = await aiormq.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.queue_declare(queue, durable=True)
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--counter", action="store_true", help="the harness counter's INCR first")
    args = parser.parse_args()
    queue, prefix = own_queue("amqp-rtt-floor"), own_prefix("amqp-rtt-floor")
    asyncio.run(declare(queue))
    ready = multiprocessing.Event()
    process = multiprocessing.Process(target=run_worker, args=(queue, prefix, args.counter, ready))
    process.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the floor's worker did not start consuming within 30 s")
        confirms, round_trips = asyncio.run(client(queue, prefix, args.n))
        process.join(10)
    finally:
        if process.is_alive():
            process.kill()
        asyncio.run(delete_amqp_queue(queue))
        delete_prefixed(prefix)
    what = "publish (confirmed) -> consume [+counter] -> SET+PUBLISH, ack -> client"
    if not args.counter:
        what = what.replace(" [+counter]", "")
    print(
        f"{what}: n={len(round_trips)} round trip p50"
        f" {statistics.median(round_trips) * 1e3:.2f} ms"
        f" p99 {sorted(round_trips)[int(len(round_trips) * 0.99)] * 1e3:.2f} ms;"
        f" the confirm within it p50 {statistics.median(confirms) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
