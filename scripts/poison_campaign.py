"""The long poison campaign, run by hand: thousands of malformed messages per transport,
between good tasks, into a running worker (the suite's fuzz tests run a few hundred).

    .venv/bin/python scripts/poison_campaign.py                     # 5,000 on each transport
    .venv/bin/python scripts/poison_campaign.py --transports redis --count 20000 --log

It uses the fuzz tests' own generators and injectors (``tests/poison.py`` and the
``test_*_fuzz_worker.py`` modules), needs the Redis and RabbitMQ servers the tests use, and
leaves nothing behind (a key prefix, a virtual host and a temporary file of its own). For each
transport it prints what the worker did with the messages; it exits 1 if an invariant of
``tests/poison.py`` failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "unit"), str(TESTS / "integration")]

import test_amqp_fuzz_worker as amqp_fuzz  # noqa: E402
import test_redis_fuzz_worker as redis_fuzz  # noqa: E402
import test_sqlite_fuzz_worker as sqlite_fuzz  # noqa: E402

import services  # noqa: E402
from celeriac.transports.broker import Broker  # noqa: E402
from poison import Tally, draw_many, mark_app, poison_envelopes, run_campaign  # noqa: E402

Injector = Callable[[Broker, Sequence[Any]], Any]


def memory(count: int, workdir: Path) -> tuple[Any, Tally, list[Any], Injector, str]:
    queue = f"campaign-{uuid.uuid4().hex}"
    app, tally = mark_app("campaign", broker=f"memory://{uuid.uuid4().hex}")

    async def inject(broker: Broker, batch: Sequence[Any]) -> None:
        for envelope in batch:
            await broker.publish(queue, envelope)

    return app, tally, draw_many(poison_envelopes(), count), inject, queue


def sqlite(count: int, workdir: Path) -> tuple[Any, Tally, list[Any], Injector, str]:
    path, queue = workdir / "campaign.db", f"campaign-{uuid.uuid4().hex}"
    app, tally = mark_app("campaign", broker=f"sqlite:///{path}")

    async def inject(broker: Broker, rows: Sequence[Any]) -> None:
        await asyncio.to_thread(sqlite_fuzz.insert_rows, path, queue, rows)

    return app, tally, sqlite_fuzz.sqlite_poison(count), inject, queue


def redis(count: int, workdir: Path) -> tuple[Any, Tally, list[Any], Injector, str]:
    queue = f"campaign-{uuid.uuid4().hex}"
    app, tally = mark_app(
        "campaign",
        broker=services.redis_url(services.REDIS_DB_BROKER),
        backend=services.redis_url(services.REDIS_DB_RESULTS),
        broker_transport_options={
            "global_keyprefix": f"{workdir.name}:",
            "visibility_timeout": 5.0,
        },
    )

    async def inject(broker: Broker, batch: Sequence[bytes]) -> None:
        await redis_fuzz.push(queue, broker, batch)

    return app, tally, redis_fuzz.redis_poison(queue, count), inject, queue


def amqp(count: int, workdir: Path) -> tuple[Any, Tally, list[Any], Injector, str]:
    url, queue = services.amqp_vhost_url(workdir.name), f"campaign-{uuid.uuid4().hex}"
    app, tally = mark_app(
        "campaign", broker=url, backend=services.redis_url(services.REDIS_DB_RESULTS)
    )

    async def inject(broker: Broker, batch: Sequence[Any]) -> None:
        await amqp_fuzz.publish_raw(url, queue, batch)

    return (
        app,
        tally,
        draw_many(amqp_fuzz.envelopes.filter(amqp_fuzz.sendable), count),
        inject,
        queue,
    )


CAMPAIGNS = {"memory": memory, "sqlite": sqlite, "redis": redis, "amqp": amqp}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default=",".join(CAMPAIGNS))
    parser.add_argument("--count", type=int, default=5000, help="poison messages per transport")
    parser.add_argument("--log", action="store_true", help="show the worker's log lines")
    args = parser.parse_args()
    if not args.log:
        logging.disable(logging.CRITICAL)  # one line per rejected message otherwise
    failed = False
    for name in args.transports.split(","):
        with tempfile.TemporaryDirectory(prefix=f"celeriac-campaign-{uuid.uuid4().hex[:8]}-") as d:
            workdir = Path(d)
            if name == "amqp":
                services.add_amqp_vhost(workdir.name)
            try:
                failed |= not run(name, args.count, workdir)
            finally:
                if name == "amqp":
                    services.delete_amqp_vhost(workdir.name)
                if name == "redis":
                    services.delete_prefixed(
                        f"{workdir.name}:", services.REDIS_DB_BROKER, services.REDIS_DB_RESULTS
                    )
    return 1 if failed else 0


def run(name: str, count: int, workdir: Path) -> bool:
    started = time.monotonic()
    app, tally, poison, inject, queue = CAMPAIGNS[name](count, workdir)
    drawn = time.monotonic() - started
    try:
        asyncio.run(run_campaign(app, tally, poison, inject, queue=queue, timeout=60 + count / 20))
    except AssertionError as exc:
        print(f"{name}: FAILED: {exc}")
        return False
    good = sum(n for marker, n in tally.runs.items() if marker.startswith("good-"))
    ran = sum(tally.runs.values()) - good
    print(
        f"{name}: {len(poison)} poison messages and {good} good tasks in"
        f" {time.monotonic() - started:.1f} s ({drawn:.1f} s drawing them): {tally.dead}"
        f" dead-lettered, {ran} valid after mutation and run once, {tally.defers} deferred,"
        f" every good task ran once, the worker never stopped"
    )
    return True


if __name__ == "__main__":
    sys.exit(main())
