"""The interop harness: real Celery and celeriac worker processes sharing one broker, Redis
or RabbitMQ (results in Redis either way).

Each test module gets one :class:`InteropRun`: a key prefix of its own (``global_keyprefix`` on
broker and result keys, both sides), a directory for marker files, and a pool of uniquely
named queues. The module's worker (started once, module-scoped) consumes every queue of the
pool and each test takes queues of its own from it, so tests never see each other's messages.
Tests that must start a worker after publishing (priorities) start a private one on a queue
outside the pool. Afterwards only keys under the run's prefix are deleted, in DBs 12 and 13;
on RabbitMQ the run has a virtual host of its own, deleted with everything in it.

Workers are subprocesses; readiness and progress are read from their log lines
(:class:`WorkerProcess` of the integration tests). Every wait has a timeout, and nothing
waits by sleeping: ``services.wait_until`` polls a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from integration.conftest import WorkerProcess
from services import (
    REDIS_HOST,
    REDIS_PORT,
    add_amqp_vhost,
    amqp_vhost_url,
    delete_amqp_vhost,
    wait_until,
)
from transports import TRANSPORTS, Corner

TESTS = Path(__file__).resolve().parents[1]
#: Redis databases of the interop suite (the integration tests use 14/15).
INTEROP_DB_BROKER, INTEROP_DB_RESULTS = 12, 13
RESULT_KEY = "celery-task-meta-"
#: kombu's Redis priority steps: one list per step, the bare queue name for step 0.
PRIORITY_STEPS = (0, 3, 6, 9)
CELERIAC_READY = " ready: pid "
CELERY_READY = " ready."
#: Queues per module: each test takes one or two of them.
POOL_SIZE = 24
CELERY_APP = "interop.peers.celery_app"
CELERIAC_APP = "interop.peers.celeriac_app:app"


#: The brokers the interop modules run on: those Celery speaks too (results are in Redis).
INTEROP_BROKERS = tuple(name for name, t in TRANSPORTS.items() if t.broker and t.celery)


def node_of(worker: WorkerProcess) -> str:
    """A worker's node name, as its command line gave it (``-n``)."""
    return worker.argv[worker.argv.index("-n") + 1]


def answering(client: Any, worker: WorkerProcess, timeout: float = 20.0) -> str:
    """Once ``worker`` answers a ping from ``client`` (a Celery app or a celeriac one); its
    node name."""
    node = node_of(worker)
    wait_until(
        lambda: client.control.inspect([node], timeout=0.5).ping(),
        timeout,
        f"{node} to answer a ping",
    )
    return node


class InteropRun:
    """One test module's private corner of the shared Redis (and, on RabbitMQ, a virtual
    host of its own), and the workers it started."""

    def __init__(
        self, name: str, tmp: Path, transport: str = "redis", results: str = "redis"
    ) -> None:
        self.transport = transport
        self.results_via = results  # "redis", or "rpc" (rpc://, on RabbitMQ only)
        broker, backend = TRANSPORTS[transport], TRANSPORTS[results]
        broker.require()
        backend.require()
        self.vhost: str | None = None
        if broker.server == "rabbitmq":
            self.vhost = f"celeriac-interop-{name}-{uuid.uuid4().hex[:8]}"
            add_amqp_vhost(self.vhost)
        self.corner = Corner(
            tmp,
            name=f"interop-{name}-{uuid.uuid4().hex[:12]}",
            redis_dbs=(INTEROP_DB_BROKER, INTEROP_DB_RESULTS),
            amqp_vhost=self.vhost,
        )
        self.prefix = self.corner.prefix
        #: The broker's and the results' stores, both peers' (their URLs, their clean-ups).
        self.queues = broker.store(self.corner, "broker")
        self.records = backend.store(self.corner, "backend")
        self.max_priority = broker.max_priority
        self.marks = tmp / "marks"
        self.marks.mkdir()
        self.tmp = tmp
        self.pool = [self._new_queue_name() for _ in range(POOL_SIZE)]
        #: The peers' ``task_default_queue``: where a plain ``delay()`` goes.
        self.default_queue = self.pool[0]
        self._free = self.pool[1:]
        self.workers: list[WorkerProcess] = []
        self.broker = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=INTEROP_DB_BROKER)
        self.results = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=INTEROP_DB_RESULTS)

    @staticmethod
    def _new_queue_name() -> str:
        return f"interop.q.{uuid.uuid4().hex}"

    def env(self) -> dict[str, str]:
        """What both peers read (``peers/settings.py``), plus celeriac's URL overrides."""
        broker, backend = self.queues.url, self.records.url
        return {
            "INTEROP_MAX_PRIORITY": "" if self.max_priority is None else str(self.max_priority),
            "INTEROP_BROKER_URL": broker,
            "INTEROP_RESULT_BACKEND": backend,
            "INTEROP_KEYPREFIX": self.prefix,
            "INTEROP_DEFAULT_QUEUE": self.default_queue,
            "INTEROP_VISIBILITY_TIMEOUT": "60",
            "INTEROP_MARKS": str(self.marks),
            # celeriac lets these win over the app's settings: pin them to the interop DBs.
            "CELERIAC_BROKER_URL": broker,
            "CELERIAC_RESULT_BACKEND": backend,
        }

    @contextlib.contextmanager
    def active(self) -> Iterator[InteropRun]:
        """This run's settings in the environment (for both peers) until it is closed."""
        with pytest.MonkeyPatch.context() as patch:
            for key, value in self.env().items():
                patch.setenv(key, value)
            try:
                yield self
            finally:
                self.close()

    # -- queues ----------------------------------------------------------------------------

    def queue(self) -> str:
        """A queue of the pool (the module's worker consumes it) that no other test uses."""
        if not self._free:
            raise AssertionError(f"the queue pool ({POOL_SIZE}) is used up: raise POOL_SIZE")
        return self._free.pop(0)

    def private_queue(self) -> str:
        """A fresh queue that no running worker consumes."""
        return self._new_queue_name()

    def marker(self) -> str:
        """A fresh marker file name (tasks write it, or wait for it)."""
        return f"mark-{uuid.uuid4().hex}"

    # -- workers ---------------------------------------------------------------------------

    def _spawn(self, argv: list[str], ready: str) -> WorkerProcess:
        env = dict(os.environ)
        env.update(self.env())
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        worker = WorkerProcess(argv, env, self.tmp)
        self.workers.append(worker)
        worker.wait_for(ready, timeout=30)
        return worker

    def start_celeriac_worker(self, queues: list[str], *args: str) -> WorkerProcess:
        argv = [sys.executable, "-m", "celeriac.cli", "-A", CELERIAC_APP, "worker", "-l", "info"]
        argv += ["-Q", ",".join(queues), "-n", f"celeriac-{uuid.uuid4().hex[:8]}@interop"]
        return self._spawn([*argv, "--shutdown-timeout", "5", *args], CELERIAC_READY)

    def start_celery_worker(self, queues: list[str], *args: str) -> WorkerProcess:
        argv = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "-l", "info"]
        argv += ["-Q", ",".join(queues), "-n", f"celery-{uuid.uuid4().hex[:8]}@interop"]
        argv += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        return self._spawn([*argv, *args], CELERY_READY)

    def stop_worker(self, worker: WorkerProcess) -> None:
        """Warm shutdown (SIGTERM) of a celeriac worker, killed if it takes over 30 s. A
        Celery worker is killed: its warm shutdown on RabbitMQ waits for its event loop's
        next wake-up (about 10 s when no message comes), its cold one (SIGQUIT) did not
        always end a solo pool, and a test's worker has nothing left to finish (what it
        held goes back to its queue, or stays under the run's prefix, deleted with it)."""
        if worker in self.workers:
            self.workers.remove(worker)
        try:
            if "celery" in worker.argv[:4]:
                worker.kill()
            else:
                worker.stop(timeout=30)
        finally:
            worker.close()

    # -- what is in Redis ------------------------------------------------------------------

    def result_key(self, task_id: str) -> str:
        return f"{self.prefix}{RESULT_KEY}{task_id}"

    def result_record(self, task_id: str) -> dict[str, Any] | None:
        """The raw result record under this run's prefix, or None (no key)."""
        raw = self.results.get(self.result_key(task_id))
        return None if raw is None else json.loads(raw)

    def held(self, task_id: str) -> bool:
        """Whether a message of ``task_id`` is still held unacknowledged: in this run's
        ``unacked`` hash on Redis; on RabbitMQ, whether any message of the run's virtual host
        is (RabbitMQ reports counts, not messages)."""
        if self.vhost is not None:
            listed = subprocess.run(
                ["rabbitmqctl", "list_queues", "-q", "-p", self.vhost, "messages_unacknowledged"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return any(n.strip().isdigit() and int(n) > 0 for n in listed.stdout.splitlines())
        values = self.broker.hvals(f"{self.prefix}unacked")
        return any(task_id.encode() in value for value in values)

    def list_key(self, queue: str, step: int) -> str:
        """kombu's list for ``queue`` and priority step 0, 3, 6 or 9, under the prefix."""
        return self.prefix + (queue if step == 0 else f"{queue}\x06\x16{step}")

    def queued(self, queue: str) -> list[dict[str, Any]]:
        """The messages waiting on ``queue``, as kombu's Redis envelopes (``headers``,
        ``properties.delivery_info.routing_key``): on Redis its lists (every priority step),
        on RabbitMQ what a look at the queue finds (all put back)."""
        if self.vhost is not None:
            return asyncio.run(self._peek(queue))
        return [
            json.loads(item)
            for step in PRIORITY_STEPS
            for item in self.broker.lrange(self.list_key(queue, step), 0, -1)
        ]

    async def _peek(self, queue: str) -> list[dict[str, Any]]:
        import aiormq
        from aiormq import spec

        assert self.vhost is not None
        connection = await aiormq.connect(amqp_vhost_url(self.vhost))
        found = []
        try:
            channel = await connection.channel()
            while True:
                message = await channel.basic_get(queue)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                properties = message.header.properties
                found.append(
                    {
                        "headers": dict(properties.headers or {}),
                        "properties": {
                            "priority": properties.priority,
                            "delivery_info": {"routing_key": message.routing_key},
                        },
                    }
                )
        finally:
            await connection.close()  # unacknowledged: every message goes back
        return found

    def list_lengths(self, queue: str) -> dict[int, int]:
        """How many messages wait on each of ``queue``'s lists, by kombu priority step."""
        return {step: int(self.broker.llen(self.list_key(queue, step))) for step in PRIORITY_STEPS}

    def close(self) -> None:
        for worker in list(self.workers):
            try:
                self.stop_worker(worker)
            except Exception:
                worker.close()
        self.broker.close()
        self.results.close()
        self.queues.clean()
        self.records.clean()
        if self.vhost is not None:
            delete_amqp_vhost(self.vhost)
