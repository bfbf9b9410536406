"""What only the SQLite transport promises: real processes sharing one file.

Each test that needs another process runs a small script with ``sys.executable``; the
scripts report on stdout, one line per step, so the test waits on lines, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import Broker, Delivery
from celeriac.transports.sqlite import wakeup as _wakeup
from celeriac.transports.sqlite.backend import SQLiteBackend
from celeriac.transports.sqlite.broker import (
    SQLiteBroker,
    pid_space,
    process_alive,
    process_identity,
)
from celeriac.transports.sqlite.database import Database, _Shared, encode_envelope, path_from_url

pytestmark = pytest.mark.skipif(
    not _wakeup.SUPPORTED or not os.path.isdir("/proc/self"),
    reason="process liveness and wake-ups are tested on Linux",
)

WAIT = 10.0
FAST = {"visibility_timeout": 1.0, "sweep_interval": 0.2}
NO_SAFETY_POLL = {"poll_interval": 30.0}  # only a wake-up can be fast

HEAD = """
import asyncio, json, sys, time
from celeriac.protocol.envelope import Envelope
from celeriac.transports.sqlite.broker import SQLiteBroker
from celeriac.transports.sqlite.backend import SQLiteBackend
URL, QUEUE, OPTIONS = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def say(*words):
    print(*words, flush=True)
"""

HOLDER = """
async def main():
    broker = SQLiteBroker(URL, options=OPTIONS)
    await broker.connect()
    it = broker.consume([QUEUE], prefetch=1)
    delivery = await anext(it)
    say("holding", delivery.envelope.body.decode())
    await asyncio.to_thread(sys.stdin.readline)
    await broker.ack(delivery)
    say("acked")
    await it.aclose()
    await broker.close()
asyncio.run(main())
"""

PRODUCER = """
async def main():
    broker = SQLiteBroker(URL, options=OPTIONS)
    await broker.connect()
    await broker.publish(QUEUE, Envelope(b"durable", "text/plain", "utf-8"))
    say("published")
    time.sleep(60)
asyncio.run(main())
"""

CONSUMER = """
async def main():
    broker = SQLiteBroker(URL, options=OPTIONS)
    await broker.connect()
    it = broker.consume([QUEUE], prefetch=1)
    await broker.ack(await anext(it))
    say("primed")
    delivery = await anext(it)
    say("latency", time.time() - float(delivery.envelope.body))
    await broker.ack(delivery)
    await it.aclose()
    await broker.close()
asyncio.run(main())
"""

WAITER = """
async def main():
    backend = SQLiteBackend(URL, options=OPTIONS)
    await backend.connect()
    say("primed", (await backend.wait("primer", 10))["status"])
    meta = await backend.wait(QUEUE, 10)
    say("latency", time.time() - meta["result"])
    await backend.close()
asyncio.run(main())
"""


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/celeriac.db"
    directory = _wakeup.channel_directory(str(tmp_path / "celeriac.db"), "tasks")
    shutil.rmtree(os.path.dirname(directory), ignore_errors=True)


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex}"


@pytest.fixture
async def broker(url: str) -> AsyncIterator[SQLiteBroker]:
    broker = SQLiteBroker(url, options=FAST)
    await broker.connect()
    yield broker
    await broker.close()


def envelope(body: str) -> Envelope:
    return Envelope(body.encode(), "text/plain", "utf-8")


@contextlib.asynccontextmanager
async def script(
    code: str, url: str, queue: str, options: dict[str, Any] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HEAD + code,
        url,
        queue,
        json.dumps(options or {}),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()


@contextlib.asynccontextmanager
async def consuming(broker: Broker, queue: str) -> AsyncIterator[AsyncIterator[Delivery]]:
    it = broker.consume([queue], prefetch=1)
    try:
        yield it
    finally:
        await it.aclose()


# -- crashes -----------------------------------------------------------------------------


async def test_killed_holder_is_redelivered_to_a_running_consumer(url: str, queue: str) -> None:
    survivor = SQLiteBroker(url)  # default visibility_timeout: 30 s, sweep every 2 s
    await survivor.connect()
    await survivor.publish(queue, envelope("job"))
    primers = queue + "-primers"
    it = survivor.consume([queue, primers], prefetch=1)
    try:
        async with script(HOLDER, url, queue) as proc:
            assert await line(proc) == "holding job"
            # The survivor is running (its start-up sweep is over) while the holder lives.
            await survivor.publish(primers, envelope("primer"))
            await survivor.ack(await asyncio.wait_for(anext(it), WAIT))
            waiting = asyncio.ensure_future(anext(it))
            proc.kill()
            killed = time.monotonic()
            delivery = await asyncio.wait_for(waiting, WAIT)
            assert time.monotonic() - killed < 4.0  # one sweep, far below visibility_timeout
            assert (delivery.envelope.body, delivery.redelivered) == (b"job", True)
            await survivor.ack(delivery)
    finally:
        await it.aclose()
        await survivor.close()


async def test_killed_holder_is_redelivered_when_a_consumer_starts(url: str, queue: str) -> None:
    producer = SQLiteBroker(url)
    await producer.connect()
    await producer.publish(queue, envelope("job"))
    async with script(HOLDER, url, queue) as proc:
        assert await line(proc) == "holding job"
        proc.kill()
        await proc.wait()
    started = time.monotonic()
    async with consuming(producer, queue) as it:
        delivery = await asyncio.wait_for(anext(it), WAIT)
    assert time.monotonic() - started < 1.0  # the start-up sweep, no heartbeat wait
    assert delivery.redelivered
    await producer.ack(delivery)
    await producer.close()


async def test_live_holder_is_never_robbed(broker: SQLiteBroker, url: str, queue: str) -> None:
    await broker.publish(queue, envelope("long"))
    async with script(HOLDER, url, queue, FAST) as proc, consuming(broker, queue) as it:
        assert await line(proc) == "holding long"
        # Several visibility timeouts and sweeps pass while the holder's loop keeps beating.
        robber = asyncio.ensure_future(anext(it))
        done, _ = await asyncio.wait({robber}, timeout=3 * FAST["visibility_timeout"])
        assert not done, "a live holder's message was handed to another consumer"
        robber.cancel()
        assert proc.stdin is not None
        proc.stdin.write(b"ack\n")
        assert await line(proc) == "acked"
    assert queue not in await broker.queue_sizes()


async def test_message_of_a_killed_producer_is_kept(
    broker: SQLiteBroker, url: str, queue: str
) -> None:
    async with script(PRODUCER, url, queue) as proc:
        assert await line(proc) == "published"
        proc.kill()
        await proc.wait()
    async with consuming(broker, queue) as it:
        delivery = await asyncio.wait_for(anext(it), WAIT)
        assert delivery.envelope.body == b"durable"
        await broker.ack(delivery)


def test_process_liveness_sees_zombies_and_reused_pids() -> None:
    identity = process_identity(os.getpid())
    assert identity is not None
    assert process_alive(os.getpid(), identity[1])
    assert not process_alive(os.getpid(), identity[1] + 1)  # a pid reused by another process
    assert not process_alive(4_194_305, None)  # above any pid_max
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + WAIT
        while (process_identity(child.pid) or ("?",))[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not process_alive(child.pid, None)  # exited, not yet reaped
    finally:
        child.wait()


async def test_dead_holder_rows_are_swept(broker: SQLiteBroker, url: str, queue: str) -> None:
    await broker.publish(queue, envelope("a"))
    await broker.publish(queue, envelope("b"))
    await broker.publish(queue, envelope("c"))
    await broker.publish(queue, envelope("d"))
    path = path_from_url(url)
    stale, gone, remote, other_space = "elsewhere:1:x", "here:gone", "elsewhere:2:y", "ns:1:z"
    now = time.time()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO celeriac_holders (holder, hostname, pid, pid_space, heartbeat)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (stale, "another-host", 1, None, now - 60),  # silent too long
                (gone, socket.gethostname(), 4_194_305, pid_space(), now),  # no such pid here
                (remote, "another-host", 1, None, now + 60),  # fresh elsewhere: alive
                (other_space, socket.gethostname(), 4_194_305, "pid:[1]", now),  # a container
            ],
        )
        ids = [row[0] for row in conn.execute("SELECT id FROM celeriac_messages ORDER BY id")]
        conn.executemany(
            "UPDATE celeriac_messages SET holder = ? WHERE id = ?",
            [(stale, ids[0]), (gone, ids[1]), (remote, ids[2]), (other_space, ids[3])],
        )
    async with consuming(broker, queue) as it:
        got = []
        for _ in range(2):
            got.append(await asyncio.wait_for(anext(it), WAIT))
            await broker.ack(got[-1])
    assert sorted((d.envelope.body, d.redelivered) for d in got) == [(b"a", True), (b"b", True)]
    assert (await broker.queue_sizes())[queue] == 2  # still held by live holders elsewhere


# -- wake-ups ----------------------------------------------------------------------------


async def test_cross_process_wakeup_latency(broker: SQLiteBroker, url: str, queue: str) -> None:
    async with script(CONSUMER, url, queue, NO_SAFETY_POLL) as proc:
        await broker.publish(queue, envelope("primer"))
        assert await line(proc) == "primed"
        await broker.publish(queue, envelope(repr(time.time())))
        words = (await line(proc)).split()
        assert words[0] == "latency"
        assert float(words[1]) < 0.5
        assert await proc.wait() == 0


async def test_cross_process_result_latency(url: str, queue: str) -> None:
    backend = SQLiteBackend(url)
    await backend.connect()
    try:
        async with script(WAITER, url, queue, NO_SAFETY_POLL) as proc:
            await backend.store("primer", {"status": "SUCCESS"}, expires=None)
            assert await line(proc) == "primed SUCCESS"
            await backend.store(queue, {"status": "STARTED"}, expires=None)
            await backend.store(queue, {"status": "SUCCESS", "result": time.time()}, expires=None)
            words = (await line(proc)).split()
            assert words[0] == "latency"
            assert float(words[1]) < 0.5
            assert await proc.wait() == 0
    finally:
        await backend.close()


async def test_close_removes_wakeup_sockets(url: str, queue: str, tmp_path: Path) -> None:
    broker = SQLiteBroker(url)
    await broker.connect()
    async with consuming(broker, queue) as it:
        await broker.publish(queue, envelope("x"))
        await broker.ack(await asyncio.wait_for(anext(it), WAIT))
    directory = _wakeup.channel_directory(path_from_url(url), "tasks")
    assert [n for n in os.listdir(directory) if n.startswith(f"{os.getpid()}-")]
    await broker.close()
    assert not [n for n in os.listdir(directory) if n.startswith(f"{os.getpid()}-")]


# -- the file ----------------------------------------------------------------------------


async def test_file_is_wal_and_shared_by_broker_and_backend(tmp_path: Path, queue: str) -> None:
    url = f"sqlite:///{tmp_path}/new/dir/shared.db"  # the directories are created
    broker, backend = SQLiteBroker(url), SQLiteBackend(url)
    await broker.connect()
    await backend.connect()
    try:
        await broker.publish(queue, envelope("x"))
        await backend.store("t", {"status": "SUCCESS"}, expires=None)
        assert (await broker.queue_sizes())[queue] == 1
        assert await backend.get("t") == {"status": "SUCCESS"}
    finally:
        await broker.close()
        await backend.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "new/dir/shared.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _database_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("celeriac-sqlite")}


async def test_broker_and_backend_on_one_file_share_one_connection(url: str, queue: str) -> None:
    """One thread and one connection per file and loop, so a process never waits for its own
    write lock; the last to close ends the thread, and the others keep working until then."""
    before = _database_threads()
    broker, backend = SQLiteBroker(url), SQLiteBackend(url)
    await asyncio.gather(broker.connect(), backend.connect())
    await broker.publish(queue, envelope("x"))
    await backend.store("t", {"status": "SUCCESS"}, expires=None)
    (thread,) = _database_threads() - before
    await broker.close()
    await backend.store("u", {"status": "SUCCESS"}, expires=None)
    assert await backend.get("u") == {"status": "SUCCESS"}
    await backend.close()
    await asyncio.to_thread(thread.join, WAIT)
    assert not thread.is_alive()


def test_a_loop_closed_with_its_database_open_does_not_haunt_the_next(tmp_path: Path) -> None:
    """A script that never closed its app leaves its connection behind; the next event loop
    on the same file opens its own instead of reusing one bound to a dead loop."""
    url = f"sqlite:///{tmp_path}/left-open.db"

    async def store_and_leave_open() -> None:
        backend = SQLiteBackend(url)
        await backend.connect()
        await backend.store("t", {"status": "SUCCESS"}, expires=None)

    async def read() -> dict[str, Any] | None:
        backend = SQLiteBackend(url)
        await backend.connect()
        try:
            return await backend.get("t")
        finally:
            await backend.close()

    for _ in range(3):
        asyncio.run(store_and_leave_open())
        assert asyncio.run(read()) == {"status": "SUCCESS"}
        # The connection left open belonged to a closed loop: the next open dropped it.
        assert not [key for key in _Shared._instances if key[0].endswith("left-open.db")]


async def test_unopenable_path_names_the_path_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/file/q.db")
    with pytest.raises(BrokerError, match=r"file/q\.db.*sqlite:////absolute"):
        await broker.connect()


async def test_expired_results_are_swept_on_connect(url: str) -> None:
    backend = SQLiteBackend(url)
    await backend.connect()
    await backend.store("old", {"status": "SUCCESS"}, expires=0.0)
    await backend.close()
    backend = SQLiteBackend(url)
    await backend.connect()
    await backend.close()
    with contextlib.closing(sqlite3.connect(path_from_url(url))) as conn:
        assert conn.execute("SELECT COUNT(*) FROM celeriac_results").fetchone() == (0,)


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert path_from_url("sqlite:///celeriac.db") == str(tmp_path / "celeriac.db")
    assert path_from_url("sqlite:///data/q.db") == str(tmp_path / "data" / "q.db")
    assert path_from_url("sqlite:////var/lib/q.db") == "/var/lib/q.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/q.db", "redis://x"):
        with pytest.raises(ConfigurationError):
            path_from_url(bad)


# -- permissions -------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes(path: Path) -> dict[str, int]:
    """The permission bits of the database and of its WAL and shared-memory files."""
    return {
        suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) for suffix in ("", "-wal", "-shm")
    }


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o277], ids=["022", "002", "277"])
async def test_new_database_files_are_owner_only(tmp_path: Path, queue: str, mask: int) -> None:
    """They hold task arguments and results: 0600 whatever the umask (even one that would
    leave the owner unable to write)."""
    path = tmp_path / "private.db"
    url = f"sqlite:///{path}"
    broker, backend = SQLiteBroker(url), SQLiteBackend(url)
    with umask(mask):
        await broker.connect()
        await backend.connect()
    try:
        await broker.publish(queue, envelope("secret arguments"))
        await backend.store("t", {"status": "SUCCESS", "result": "secret"}, expires=None)
        assert modes(path) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        await broker.close()
        await backend.close()


async def test_an_existing_database_keeps_its_mode(tmp_path: Path, queue: str) -> None:
    """A file the user opened to a group on purpose stays so, and SQLite gives its WAL and
    shared-memory files the same mode."""
    path = tmp_path / "shared.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o640)
    broker = SQLiteBroker(f"sqlite:///{path}")
    with umask(0o022):
        await broker.connect()
    try:
        await broker.publish(queue, envelope("x"))
        assert modes(path) == {"": 0o640, "-wal": 0o640, "-shm": 0o640}
    finally:
        await broker.close()


# -- batches -----------------------------------------------------------------------------

BATCH = 20_000
MIDDLE = 10_500  # the id of a message in the middle of the batch (ids start at 1)


async def _prepared(url: str) -> Path:
    """An empty database with the broker's tables."""
    broker = SQLiteBroker(url)
    await broker.connect()
    await broker.close()
    return Path(path_from_url(url))


def _messages(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM celeriac_messages").fetchone()
        return int(count)


async def test_a_batch_that_fails_midway_queues_nothing(url: str) -> None:
    path = await _prepared(url)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER fail_mid_batch AFTER INSERT ON celeriac_messages"
            f" WHEN NEW.id = {MIDDLE} BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    app = Celery("batch", broker=url, backend="memory://")
    async with app.setup():
        with pytest.raises(BrokerError, match="injected failure") as raised:
            await app.send_many("batch.noop", [(i,) for i in range(BATCH)])
    assert f"queued 0 of these {BATCH} tasks" in "".join(raised.value.__notes__)
    assert _messages(path) == 0


STALLING_PRODUCER = """
import sqlite3
from celeriac import Celery
connect = sqlite3.connect
def stalling_connect(*args, **kwargs):
    conn = connect(*args, **kwargs)
    def stall():  # called by the test's trigger, on the database thread, mid-batch
        say("stalled")
        time.sleep(60)
    conn.create_function("stall", 0, stall)
    return conn
sqlite3.connect = stalling_connect
app = Celery("producer", broker=URL, backend="memory://")
async def main():
    async with app.setup():
        await app.send_many("batch.noop", [(i,) for i in range(OPTIONS["batch"])])
    say("sent")
asyncio.run(main())
"""


async def test_a_producer_killed_mid_batch_queues_nothing(url: str, queue: str) -> None:
    path = await _prepared(url)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER stall_mid_batch AFTER INSERT ON celeriac_messages"
            f" WHEN NEW.id = {MIDDLE} BEGIN SELECT stall(); END"
        )
    async with script(STALLING_PRODUCER, url, queue, {"batch": BATCH}) as proc:
        assert await line(proc) == "stalled"
        proc.kill()
        await proc.wait()
    assert _messages(path) == 0


async def test_an_abandoned_transaction_in_parts_rolls_back(url: str) -> None:
    """Making a part fails, or the maker is cancelled: nothing is written, and the
    database thread is free for the next job."""
    db = Database(path_from_url(url))
    await db.open()

    def insert(conn: sqlite3.Connection, part: list[int]) -> None:
        conn.executemany(
            "INSERT INTO celeriac_results (task_id, data, ready) VALUES (?, x'', 1)",
            [(str(n),) for n in part],
        )

    def failing_parts() -> Iterator[list[int]]:
        yield [1, 2]
        yield [3, 4]
        raise ValueError("cannot make the third part")

    def cancelled_parts() -> Iterator[list[int]]:
        yield [5, 6]
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        yield [7, 8]

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM celeriac_results").fetchone()[0])

    try:
        with pytest.raises(ValueError, match="third part"):
            await db.transaction_in_parts(insert, failing_parts())
        assert await asyncio.wait_for(db.run(count), WAIT) == 0
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(db.transaction_in_parts(insert, cancelled_parts()))
        assert await asyncio.wait_for(db.run(count), WAIT) == 0
        await db.transaction_in_parts(insert, iter([[9], [10, 11]]))
        assert await db.run(count) == 3
    finally:
        await db.close()


async def test_a_consumer_rides_out_a_write_lock_held_past_its_busy_timeout(
    url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A long batch holds the file's write lock: a claim that times out waiting for it is
    retried, and the consumer gets the batch once it commits."""
    broker = SQLiteBroker(url, options={"busy_timeout": 0.1, "poll_interval": 0.1})
    await broker.connect()
    try:
        async with consuming(broker, queue) as it:
            await broker.publish(queue, envelope("first"))
            await broker.ack(await asyncio.wait_for(anext(it), WAIT))  # consuming from here
            waiting = asyncio.ensure_future(anext(it))
            with contextlib.closing(sqlite3.connect(path_from_url(url))) as other:
                other.execute("BEGIN IMMEDIATE")  # the batch of another producer, in progress
                other.execute(
                    "INSERT INTO celeriac_messages (queue, priority, visible_at, envelope)"
                    " VALUES (?, 0, 0, ?)",
                    (queue, encode_envelope(envelope("batched"))),
                )
                deadline = time.monotonic() + WAIT
                while "claiming from queue(s)" not in caplog.text:
                    assert time.monotonic() < deadline, "no claim timed out"
                    assert not waiting.done(), waiting
                    await asyncio.sleep(0.02)  # polling the log, with a deadline
                other.execute("COMMIT")
            delivery = await asyncio.wait_for(waiting, WAIT)
            assert delivery.envelope.body == b"batched"
            await broker.ack(delivery)
    finally:
        await broker.close()


def test_a_result_that_never_comes_names_the_file_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client run from another directory than the worker reads its own ``celeriac.db``:
    the timeout says which file it waited on, by its absolute path, and why it may differ."""
    from celeriac.errors import TimeoutError as CeleriacTimeout

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)
    app = Celery("t", broker="sqlite:///celeriac.db", set_as_current=False)
    try:
        result = app.send_task("never.runs", queue=f"q-{uuid.uuid4().hex}")
        with pytest.raises(CeleriacTimeout) as caught:
            result.get(timeout=0.2)
    finally:
        app.close()
    message = str(caught.value)
    assert f"sqlite:///{tmp_path / 'celeriac.db'}" in message, message
    assert "relative sqlite:/// path is read from each process's current directory" in message
