"""Real services for the tests: where they are, and what happens when one is missing.

Locally, a test whose service is down is skipped with the command that starts it; under
``CI=true`` it fails instead, so a CI run can never pass by skipping what it must test.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import pytest

#: The Celery messages and result records the protocol tests use as vectors, captured from
#: the real Celery by ``scripts/capture_celery_fixtures.py`` (run it again to refresh them).
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures" / "celery"

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Redis databases the test suite may use (the benchmark harness owns 1, 2 and 5).
REDIS_DB_BROKER, REDIS_DB_RESULTS = 14, 15
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//"
_START = {
    "redis": "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save ''"
    " --appendonly no",
    "rabbitmq": "rabbitmq-server -detached",
}


def redis_url(db: int = REDIS_DB_BROKER) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def unavailable(message: str) -> NoReturn:
    """A test cannot run here: skip it, or under ``CI=true`` fail it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def require(service: str, host: str, port: int) -> None:
    """Skip (or, under CI, fail) unless ``host:port`` accepts connections."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        unavailable(
            f"{service} is not reachable at {host}:{port} ({exc}); start it: {_START[service]}"
        )


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` (state in Redis, a file, a process) until it returns something
    truthy, which is returned; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def require_redis() -> None:
    require("redis", REDIS_HOST, REDIS_PORT)


def require_rabbitmq() -> None:
    require("rabbitmq", AMQP_HOST, AMQP_PORT)


def amqp_vhost_url(vhost: str) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"


def add_amqp_vhost(vhost: str) -> None:
    """A virtual host of the tests' own (guest may use it): queue names there, such as
    ``celery``, are nobody else's. ``rabbitmqctl`` runs on the same machine as RabbitMQ."""
    import subprocess

    for argv in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        done = subprocess.run(["rabbitmqctl", *argv], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            unavailable(f"rabbitmqctl {' '.join(argv)} failed: {done.stderr.strip()}")


def delete_amqp_vhost(vhost: str) -> None:
    import subprocess

    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


async def delete_amqp_queues(names: Iterable[str], url: str = AMQP_URL) -> None:
    """Delete the queues and exchanges a test declared (by name: nothing else)."""
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
            await channel.exchange_delete(name)
    finally:
        await connection.close()


def delete_prefixed(prefix: str, *dbs: int) -> None:
    """Delete the keys a test made under its own prefix (nothing else) in Redis ``dbs``."""
    import redis

    for db in dbs:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def free_port() -> int:
    """A TCP port nothing listens on right now, for a private server of a test's own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
) -> Any:
    """``wait_until`` for async tests: polls without blocking the event loop. The condition
    may be a coroutine function, for a state only the broker or backend can tell."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
