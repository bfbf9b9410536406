"""The floor under a Redis round trip on this machine, with no task queue at all.

Two processes and raw redis-py (asyncio, hiredis; the worker side on uvloop, as celeriac's
worker): the client LPUSHes a message and waits for a PUBLISH on a channel it subscribed to
beforehand (the best case: no SUBSCRIBE or GET per call); the worker BRPOPs it and answers
with SET + PUBLISH in one pipeline. ``--hold`` adds what a Celery-compatible worker must
also do before running a task: record the message in ``unacked`` (ZADD + HSET in MULTI).

    .venv/bin/python bench/redis_floor.py [--n 2000] [--hold]

Uses Redis DB 14 under the key prefix ``celeriac-floor:`` and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time

import redis.asyncio as aioredis

URL = "redis://127.0.0.1:6379/14"
PREFIX = "celeriac-floor:"
QUEUE, CHANNEL, STOP = PREFIX + "q", PREFIX + "done", b"stop"


async def worker(hold: bool) -> None:
    client = aioredis.Redis.from_url(URL)
    blocking = aioredis.Redis.from_url(URL)
    while True:
        _, message = await blocking.brpop([QUEUE], timeout=0)
        if message == STOP:
            break
        if hold:
            pipe = client.pipeline(transaction=True)
            pipe.zadd(PREFIX + "unacked_index", {message: time.time()})
            pipe.hset(PREFIX + "unacked", message, message)
            await pipe.execute()
        pipe = client.pipeline(transaction=False)
        pipe.set(PREFIX + "result", message, ex=60)
        pipe.publish(CHANNEL, message)
        await pipe.execute()
        if hold:
            pipe = client.pipeline(transaction=False)
            pipe.zrem(PREFIX + "unacked_index", message)
            pipe.hdel(PREFIX + "unacked", message)
            await pipe.execute()
    await client.aclose()
    await blocking.aclose()


def run_worker(hold: bool) -> None:
    import uvloop

    uvloop.run(worker(hold))


async def client(n: int) -> list[float]:
    redis = aioredis.Redis.from_url(URL)
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=5)  # the confirmation
    latencies = []
    for i in range(n + 50):
        started = time.perf_counter()
        await redis.lpush(QUEUE, str(i))
        while (await pubsub.get_message(timeout=5)) is None:
            pass
        if i >= 50:  # warm-up
            latencies.append(time.perf_counter() - started)
    await redis.lpush(QUEUE, STOP)
    await pubsub.aclose()
    keys = [key async for key in redis.scan_iter(match=PREFIX + "*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--hold", action="store_true", help="record in unacked first (kombu)")
    args = parser.parse_args()
    process = multiprocessing.Process(target=run_worker, args=(args.hold,))
    process.start()
    latencies = sorted(asyncio.run(client(args.n)))
    process.join(10)
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(len(latencies) * 0.99)] * 1e3
    what = (
        "LPUSH -> BRPOP [+hold] -> SET+PUBLISH -> client"
        if args.hold
        else "LPUSH -> BRPOP -> SET+PUBLISH -> client"
    )
    print(f"{what}: n={len(latencies)} p50 {p50:.2f} ms p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
