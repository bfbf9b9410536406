"""Rows of the embedded broker's table that are not messages are data, never a crash.

Another program can write anything into ``celeriac_messages``. Each test queues good tasks,
writes poison rows by hand behind them (and good tasks behind those), runs workers in this
process, and checks: the workers are still running, every good task ran once, every poison
row is a dead letter with a reason and its raw bytes, and the queue is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from celeriac import Celery, cli
from celeriac.protocol.message import build_task_message
from celeriac.transports.sqlite import wakeup as _wakeup
from celeriac.transports.sqlite.broker import SQLiteBroker
from celeriac.transports.sqlite.database import decode_envelope, encode_envelope
from celeriac.worker.worker import Worker

WAIT = 20.0
QUEUE = "celery"  # the issue's row names it; the file is this test's own
MARK = "poison_test.mark"


def _envelope_bytes(header: object, body: bytes = b"[[], {}, {}]") -> bytes:
    """An envelope as the broker lays it out, with any JSON as its header."""
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + body


def _marked(marker: str) -> bytes:
    """A valid envelope calling the mark task: a row that must not run despite it."""
    return encode_envelope(build_task_message(MARK, f"id-{marker}", (marker,), {}))


_HEADER = {"content_type": "application/json", "content_encoding": "utf-8"}

#: (what the row is, its priority, visible_at and envelope as SQL expressions, the raw bytes
#: its dead letter must keep). The first is the issue's row, byte for byte.
POISON: list[tuple[str, str, str, str, bytes]] = [
    ("the issue's row", "0", "0", "x'00'", b"\x00"),
    ("text envelope", "0", "0", "'not an envelope'", b"not an envelope"),
    ("text envelope, bad UTF-8", "0", "0", "CAST(x'ff00fe' AS TEXT)", b"\xff\x00\xfe"),
    ("JSON list header", "0", "0", "?", _envelope_bytes([1, 2, 3])),
    ("JSON string header", "0", "0", "?", _envelope_bytes("x")),
    ("header length past the end", "0", "0", "?", struct.pack(">I", 1000) + b"{}"),
    ("header not JSON", "0", "0", "?", struct.pack(">I", 3) + b"\xff\xfe{"),
    ("content_type a number", "0", "0", "?", _envelope_bytes({**_HEADER, "content_type": 5})),
    (
        "headers null",
        "0",
        "0",
        "?",
        _envelope_bytes({**_HEADER, "headers": None, "properties": {}}),
    ),
    (
        "properties a list",
        "0",
        "0",
        "?",
        _envelope_bytes({**_HEADER, "headers": {}, "properties": []}),
    ),
    ("priority text", "'high'", "0", "?", _marked("poison-priority-text")),
    ("priority bad UTF-8", "CAST(x'ff' AS TEXT)", "0", "?", _marked("poison-priority-utf8")),
    ("priority real", "3.5", "0", "?", _marked("poison-priority-real")),
    ("priority out of range", "42", "0", "?", _marked("poison-priority-range")),
    ("priority a blob", "x'01'", "0", "?", _marked("poison-priority-blob")),
    ("visible_at text", "0", "'soon'", "?", _marked("poison-visible-text")),
    ("envelope an integer", "0", "0", "12345", b"12345"),
]

#: Envelopes the SQLite transport reads fine but whose headers are wrong for the protocol:
#: the worker's own checks dead-letter them (its reason, the envelope's body kept).
PROTOCOL_POISON: list[bytes] = [
    _envelope_bytes({**_HEADER, "headers": {"task": 5, "id": []}, "properties": {}}),
    _envelope_bytes(
        {**_HEADER, "headers": {"task": MARK, "id": "x"}, "properties": {"priority": "x"}},
        body=b"\xff not json",
    ),
]


def insert_poison(
    path: Path, rows: list[tuple[str, str, str, str, bytes]], *, protocol_poison: bool = True
) -> None:
    """As another program writing to the file would."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for _, priority, visible_at, envelope, raw in rows:
            params = (raw,) if envelope == "?" else ()
            db.execute(
                "INSERT INTO celeriac_messages(queue,priority,visible_at,envelope)"
                f" VALUES('{QUEUE}',{priority},{visible_at},{envelope})",
                params,
            )
        for blob in PROTOCOL_POISON if protocol_poison else []:
            db.execute(
                "INSERT INTO celeriac_messages(queue,priority,visible_at,envelope) VALUES(?,0,0,?)",
                (QUEUE, blob),
            )


def stored_dead_letters(path: Path) -> list[tuple[bytes, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT envelope, reason FROM celeriac_dead_letters").fetchall()


def queued(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM celeriac_messages").fetchone()
        return int(count)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "celeriac.db"
    yield path
    directory = _wakeup.channel_directory(str(path), "tasks")
    shutil.rmtree(os.path.dirname(directory), ignore_errors=True)


def marking_app(path: Path, runs: Counter[str]) -> Celery:
    app = Celery("poison", broker=f"sqlite:///{path}", backend="memory://")

    @app.task(name=MARK)
    async def mark(marker: str) -> None:
        runs[marker] += 1

    return app


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.02)  # polling a condition, with a deadline


@contextlib.asynccontextmanager
async def running_workers(*apps: Celery) -> AsyncIterator[list[asyncio.Task[None]]]:
    workers = [Worker(app, queues=[QUEUE], concurrency=4) for app in apps]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker.run()) for worker in workers]
    try:
        yield tasks
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)


async def queue_good_poison_good(app: Celery, path: Path) -> list[str]:
    """Good tasks, then every poison row, then good tasks again: the markers of the good."""
    good = [f"good-{n}" for n in range(10)]
    async with app.setup():  # the file and its tables exist from here
        await app.send_many(MARK, [(marker,) for marker in good[:5]])
        await asyncio.to_thread(insert_poison, path, POISON)
        await app.send_many(MARK, [(marker,) for marker in good[5:]])
    return good


def assert_buried(path: Path) -> None:
    letters = stored_dead_letters(path)
    assert len(letters) == len(POISON) + len(PROTOCOL_POISON), letters
    assert all(reason for _, reason in letters)
    raw = Counter(bytes(envelope) for envelope, _ in letters)
    assert all(raw[expected] == 1 for *_, expected in POISON), raw
    assert queued(path) == 0


async def test_poison_rows_are_dead_letters_and_the_worker_goes_on(path: Path) -> None:
    runs: Counter[str] = Counter()
    app = marking_app(path, runs)
    good = await queue_good_poison_good(app, path)
    async with running_workers(app) as (worker,):
        await until(lambda: all(runs[m] for m in good), f"good tasks ran: {runs}")
        await until(lambda: queued(path) == 0, "the queue is empty")
        # One more after the poison: the worker still consumes.
        await app.send_task(MARK, ("after",))
        await until(lambda: runs["after"] == 1, "a task queued after the poison ran")
        assert not worker.done(), "the worker stopped"
    assert runs == Counter([*good, "after"]), "a good task ran twice or a poison row ran"
    assert_buried(path)


async def test_the_issues_row_alone(path: Path) -> None:
    runs: Counter[str] = Counter()
    app = marking_app(path, runs)
    async with app.setup():
        await app.send_task(MARK, ("before",))
        await asyncio.to_thread(insert_poison, path, POISON[:1], protocol_poison=False)
        await app.send_task(MARK, ("after",))
    async with running_workers(app) as (worker,):
        await until(lambda: runs["after"] > 0, f"the task behind the row ran: {runs}")
        await until(lambda: queued(path) == 0, "the queue is empty")
        assert not worker.done()
    assert runs == Counter(["before", "after"])
    (letter,) = stored_dead_letters(path)
    assert letter[0] == b"\x00"
    assert "unreadable message row" in letter[1]


async def test_two_workers_on_one_file_both_survive(path: Path) -> None:
    runs: Counter[str] = Counter()
    first, second = marking_app(path, runs), marking_app(path, runs)
    good = await queue_good_poison_good(first, path)
    async with running_workers(first, second) as workers:
        await until(lambda: all(runs[m] for m in good), f"good tasks ran: {runs}")
        await until(lambda: queued(path) == 0, "the queue is empty")
        assert not any(worker.done() for worker in workers), "a worker stopped"
    assert runs == Counter(good)
    assert_buried(path)


async def test_null_columns_of_a_hand_made_table(path: Path) -> None:
    """A table created by another program, without celeriac's NOT NULL constraints: NULLs
    in any column the worker reads are poison like the rest."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE celeriac_messages (id INTEGER PRIMARY KEY, queue TEXT, priority"
            " INTEGER, visible_at REAL, envelope BLOB, redelivered INTEGER DEFAULT 0, holder TEXT)"
        )
    runs: Counter[str] = Counter()
    app = marking_app(path, runs)
    async with app.setup():
        await app.send_task(MARK, ("before",))
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"INSERT INTO celeriac_messages VALUES (NULL, '{QUEUE}', 0, 0, NULL, 0, NULL)")
        db.execute(
            "INSERT INTO celeriac_messages VALUES (NULL, ?, NULL, 0, ?, 0, NULL)",
            (QUEUE, _marked("null-priority")),
        )
        db.execute(
            "INSERT INTO celeriac_messages VALUES (NULL, ?, 0, NULL, ?, NULL, NULL)",
            (QUEUE, _marked("null-visible-at")),
        )
    async with app.setup():
        await app.send_task(MARK, ("after",))
    async with running_workers(app) as (worker,):
        await until(lambda: runs["before"] and runs["after"] > 0, f"good tasks ran: {runs}")
        await until(lambda: queued(path) == 0, "the queue is empty")
        assert not worker.done()
    assert runs == Counter(["before", "after"])
    letters = stored_dead_letters(path)
    assert sorted(bytes(e) for e, _ in letters) == sorted(
        [b"", _marked("null-priority"), _marked("null-visible-at")]
    )
    assert any("NULL" in reason for _, reason in letters), letters


async def test_readers_of_dead_letters_cope_with_raw_bytes(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs: Counter[str] = Counter()
    app = marking_app(path, runs)
    good = await queue_good_poison_good(app, path)
    async with running_workers(app):
        await until(lambda: all(runs[m] for m in good), "good tasks ran")
        await until(lambda: queued(path) == 0, "the queue is empty")
    broker = SQLiteBroker(f"sqlite:///{path}")
    await broker.connect()
    try:
        letters = await broker.dead_letters(limit=1000)
        assert await broker.dead_letter_count() == len(letters) == len(POISON + PROTOCOL_POISON)
    finally:
        await broker.close()
    bodies = {letter.envelope.body for letter in letters}
    assert all(expected in bodies for *_, expected in POISON if not _decodes(expected))
    assert all(letter.reason for letter in letters)
    # Rows no consumer takes, in queues whose names are not text: counted all the same.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for name in ("x'00'", "CAST(x'ff' AS TEXT)"):
            db.execute(
                "INSERT INTO celeriac_messages(queue,priority,visible_at,envelope)"
                f" VALUES({name},0,0,x'00')"
            )
    capsys.readouterr()
    assert await cli._status(app, argparse.Namespace(queues=None)) == 0
    out = capsys.readouterr().out
    assert f"dead letters: {len(letters)}" in out
    assert "unreadable message row" in out
    assert out.count(": 1\n") == 2, out


def _decodes(blob: bytes) -> bool:
    try:
        decode_envelope(blob)
    except Exception:
        return False
    return True
