"""``sqlite:///path`` results: one table in the same kind of file as the SQLite broker.

Records live in ``celeriac_results`` and event logs in ``celeriac_events`` (see
``database.py``); the file may be the broker's own. Storing a ready record or an
event notifies the ``results`` wake-up channel after the commit. Waiting never polls per
waiter: one watcher task per backend instance re-reads, on each wake-up, only the ids its
waiters wait for, in one query for all of them; a new waiter is checked at once, and a slow
safety poll covers a lost wake-up. Streams re-read their task's log on every wake-up.

Expired records are invisible at once, deleted when read, and swept out on connect and
every ``cleanup_every`` stores, with expired counters and leases.

Counters (``celeriac_counters``), leases (``celeriac_leases``) and rate limits change in one
``BEGIN IMMEDIATE`` transaction each, so processes sharing the file see each step whole. They
expire by the backend's ``clock`` (wall time unless a test passes its own), as do saved
groups and chord joins. A rate limit is its start times (``celeriac_rate_starts``, one row
each, so equal times are distinct starts) and its next retry time (``celeriac_rates``, with
when the limit goes idle); every call drops the key's starts older than its period, and the
sweep drops idle limits with their starts. Documents are rows of ``celeriac_documents``,
keyed by collection and name, kept until deleted.

The tables of documents and rate limits are created by the backend when it connects (if
missing), so a file made by an older version gains them.

Saved groups are rows of ``celeriac_groups`` (the record as given, in kombu's JSON). A chord
join is Redis's (Celery's) in two tables: ``celeriac_chords`` holds a chord's size (Redis's
``.s``), how many parts it received, when that expires, and its claim (``.c``: the token of
the caller that completed it, or ``"done"``); ``celeriac_chord_parts`` holds each part as
Celery's ``[1, task_id, state, value]``, keyed by ``"<task id>:<index>"`` (``.j`` and ``.d``).
:meth:`~SQLiteBackend.chord_part` is one ``BEGIN IMMEDIATE`` transaction: insert the part
unless present, count, compare with the size, claim; the write lock makes that one step for
every process on the file. Only a part checks for completion, as in Celery: the producer
calls :meth:`~SQLiteBackend.chord_start` before it publishes the last header task, so the
last part always finds the size.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from itertools import chain
from typing import Any, NamedTuple

from celeriac import errors
from celeriac.protocol.serialization import json_text
from celeriac.transports.backend import (
    CHORD_CLAIM_SECONDS,
    CHORD_DONE_SECONDS,
    DONE,
    Changes,
    ChordPart,
    EventLog,
    KeyValueBackend,
    Log,
    Meta,
    decode,
    decode_part,
    part_key,
    part_member,
    rate_wait,
    spaced_retry,
)
from celeriac.transports.broker import now, wait_for_signal
from celeriac.transports.options import Option, checked_options
from celeriac.transports.sqlite.database import (
    Database,
    WriteBatch,
    absolute_url,
    chunks,
    marks,
    path_from_url,
)
from celeriac.transports.sqlite.wakeup import Listener, Notifier, channel_directory

log = logging.getLogger(__name__)

_Row = tuple[str, bytes, bool, float | None, bool]  # id, data, ready, expires_at, is an event

_UPSERT = """
INSERT INTO celeriac_results (task_id, data, ready, expires_at) VALUES {rows}
ON CONFLICT (task_id) DO UPDATE
SET data = excluded.data, ready = excluded.ready, expires_at = excluded.expires_at
"""
_APPEND = """
INSERT INTO celeriac_events (task_id, seq, data, expires_at)
SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ? FROM celeriac_events WHERE task_id = ?
"""
_CLEANUP = (
    "DELETE FROM celeriac_results WHERE expires_at IS NOT NULL AND expires_at <= ?",
    "DELETE FROM celeriac_events WHERE expires_at IS NOT NULL AND expires_at <= ?",
)
#: Swept with the records, by the backend's clock. A chord's row outlives its parts while
#: its claim (or "done") holds.
_CLEANUP_KEPT = (
    "DELETE FROM celeriac_counters WHERE expires_at IS NOT NULL AND expires_at <= ?1",
    "DELETE FROM celeriac_rate_starts WHERE key IN"
    " (SELECT key FROM celeriac_rates WHERE idle_at <= ?1)",
    "DELETE FROM celeriac_rates WHERE idle_at <= ?1",
    "DELETE FROM celeriac_leases WHERE expires_at <= ?1",
    "DELETE FROM celeriac_groups WHERE expires_at IS NOT NULL AND expires_at <= ?1",
    "DELETE FROM celeriac_chord_parts WHERE group_id IN"
    " (SELECT group_id FROM celeriac_chords WHERE expires_at IS NOT NULL AND expires_at <= ?1)",
    "DELETE FROM celeriac_chords WHERE expires_at IS NOT NULL AND expires_at <= ?1"
    " AND (held_until IS NULL OR held_until <= ?1)",
)
_COUNTER = "SELECT value, expires_at FROM celeriac_counters WHERE key = ?"
_SET_COUNTER = """
INSERT INTO celeriac_counters (key, value, expires_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
"""
#: The tables of documents and rate limits, created with the backend's first connection to
#: a file (one made before they existed gains them).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_documents (
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (collection, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_rates (
    key TEXT PRIMARY KEY,
    next_retry REAL NOT NULL,
    idle_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_rate_starts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_rate_starts_key ON celeriac_rate_starts (key, at);
"""
_INIT_COUNTER = """
INSERT INTO celeriac_counters (key, value, expires_at) VALUES (?1, ?2, ?3)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
WHERE celeriac_counters.expires_at IS NOT NULL AND celeriac_counters.expires_at <= ?4
"""
_SET_DOCUMENT = """
INSERT INTO celeriac_documents (collection, name, data) VALUES (?, ?, ?)
ON CONFLICT (collection, name) DO UPDATE SET data = excluded.data
"""
_RATE = "SELECT next_retry, idle_at FROM celeriac_rates WHERE key = ?"
_SET_RATE = """
INSERT INTO celeriac_rates (key, next_retry, idle_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET next_retry = excluded.next_retry, idle_at = excluded.idle_at
"""
_RELEASE_LEASE = "DELETE FROM celeriac_leases WHERE name = ? AND holder = ?"
_LEASE = "SELECT holder, expires_at FROM celeriac_leases WHERE name = ?"
_ADD_REVOKED = """
INSERT INTO celeriac_revoked (task_id, until) VALUES (?, ?)
ON CONFLICT (task_id) DO UPDATE SET until = max(until, excluded.until)
"""
_SET_LEASE = """
INSERT INTO celeriac_leases (name, holder, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
"""
_SET_GROUP = """
INSERT INTO celeriac_groups (group_id, data, expires_at) VALUES (?, ?, ?)
ON CONFLICT (group_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at
"""
_CHORD = (
    "SELECT size, received, expires_at, holder, held_until FROM celeriac_chords WHERE group_id = ?"
)
_SET_CHORD = """
INSERT INTO celeriac_chords (group_id, size, received, expires_at, holder, held_until)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, received = excluded.received,
    expires_at = excluded.expires_at, holder = excluded.holder, held_until = excluded.held_until
"""
_ADD_PART = (
    "INSERT OR IGNORE INTO celeriac_chord_parts (group_id, part, idx, member) VALUES (?, ?, ?, ?)"
)
#: Redis's order of a sorted set scored by index (no index: +inf, last), then by member.
_PARTS = (
    "SELECT idx, member FROM celeriac_chord_parts WHERE group_id = ?"
    " ORDER BY idx IS NULL, idx, member"
)
_DROP_PARTS = "DELETE FROM celeriac_chord_parts WHERE group_id = ?"


#: ``result_backend_transport_options`` (see :mod:`celeriac.transports.options`).
_OPTIONS = {
    "poll_interval": Option(float, 1.0),  # safety re-check when no wake-up came
    "cleanup_every": Option(int, 100),  # stores between sweeps of expired records
    "busy_timeout": Option(float, 10.0),  # to wait for another process's write lock
}


class SQLiteBackend(KeyValueBackend):
    """Results in a SQLite file shared by every process on the machine.

    Options (``result_backend_transport_options``; another name or a value of the wrong
    type is a ConfigurationError): ``poll_interval`` (1.0 s: safety re-check when no wake-up came),
    ``cleanup_every`` (100: stores between sweeps of expired records), ``busy_timeout``
    (10.0 s to wait for another process's write lock). ``clock`` (wall time by default) is
    what counters, leases, saved groups and chord joins expire by, and what rate limits time
    their starts by: a test may pass one it moves itself (every process on the file should
    read the same clock).
    """

    not_ready_hint = (
        ": the worker must use this same file (a relative sqlite:/// path is read from each"
        " process's current directory: give both an absolute one, or CELERIAC_BROKER_URL)"
    )

    def describe(self) -> str:
        """The file by its absolute path: a relative one depends on the current directory."""
        return absolute_url(self.url)

    def __init__(
        self,
        url: str,
        *,
        options: dict[str, Any] | None = None,
        broker_url: str | None = None,
        clock: Callable[[], float] = now,
    ) -> None:
        super().__init__(url, options=options, broker_url=broker_url)
        self.clock = clock
        self.path = path_from_url(url)
        opts = checked_options(
            self.options, _OPTIONS, "result_backend_transport_options", "the SQLite backend"
        )
        self.poll_interval: float = opts["poll_interval"]
        self.cleanup_every: int = opts["cleanup_every"]
        self._db = Database(self.path, busy_timeout=opts["busy_timeout"])
        self._notifier = Notifier(channel_directory(self.path, "results"))  # database thread only
        self._listener: Listener | None = None
        self._waiters: dict[str, list[asyncio.Future[bytes]]] = {}
        self._fresh: set[str] = set()  # ids whose waiters have not been checked yet
        self._notified = False  # a wake-up came: every waited id may be ready
        self._unreadable = False  # the last read of waited ids failed (logged once)
        self._signal = asyncio.Event()
        self._streams: set[asyncio.Event] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._stores = 0  # since the last sweep of expired records; database thread only
        self._writes: WriteBatch[_Row] = WriteBatch(self._db, self._write, then=self._written)
        self._claims: dict[str, str] = {}  # group id -> the token of a chord this one claimed
        self._closed = False

    async def connect(self) -> None:
        await self._db.open()
        await self._db.run(_create_tables)
        await self._db.run(self._cleanup)

    async def close(self) -> None:
        """Fail every waiter, stop watching, close the database."""
        if self._closed:
            return
        self._closed = True
        await self._writes.close()
        error = errors.BrokerError(f"the result backend {self.url} was closed")
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._waiters.clear()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        await self._db.close()
        self._notifier.close()

    async def _set(self, task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        """Stores are batched like acks: a busy worker commits many results at once."""
        expires_at = None if expires is None else now() + expires
        await self._commit((task_id, data, ready, expires_at, False))

    async def _append(self, task_id: str, data: bytes, expires: float | None) -> None:
        # The same batches as records: an event and the final record commit in call order.
        expires_at = None if expires is None else now() + expires
        await self._commit((task_id, data, False, expires_at, True))

    async def _commit(self, row: _Row) -> None:
        """Add ``row`` to the next round; a round that failed says whether waiting can help:
        SQLite's operational errors (the write lock held past ``busy_timeout``, a full disk,
        an I/O error) can pass, its other errors would come again."""
        try:
            await self._writes.add(row)
        except errors.BrokerError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.OperationalError):
                raise errors.BackendUnreachable(str(exc)) from exc
            if isinstance(cause, sqlite3.Error):
                raise errors.ResultRejected(str(exc)) from exc
            raise

    def _write(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        # One statement per chunk; rows for the same id apply in order, the last one wins.
        for chunk in chunks(rows):
            values = chain.from_iterable(row[:4] for row in chunk)
            conn.execute(_UPSERT.format(rows=marks(len(chunk), 4)), list(values))
        for task_id, data, _, expires_at, event in rows:
            if event:
                conn.execute(_APPEND, (task_id, data, expires_at, task_id))
        self._stores += len(rows)
        if self.cleanup_every > 0 and self._stores >= self.cleanup_every:
            self._stores = 0
            self._cleanup(conn)

    def _written(self, rows: list[_Row]) -> None:
        if any(ready or event for _, _, ready, _, event in rows):
            self._notifier.notify()

    async def _get(self, task_id: str) -> bytes | None:
        def get(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT data, expires_at FROM celeriac_results WHERE task_id = ?", (task_id,)
            ).fetchone()
            if row is None:
                return None
            data, expires_at = row
            if expires_at is not None and expires_at <= now():
                conn.execute(
                    "DELETE FROM celeriac_results WHERE task_id = ? AND expires_at <= ?",
                    (task_id, now()),
                )
                return None
            return bytes(data)

        return await self._db.run(get)

    async def _delete(self, task_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM celeriac_results WHERE task_id = ?", (task_id,))
            conn.execute("DELETE FROM celeriac_events WHERE task_id = ?", (task_id,))

        await self._db.run(delete)

    def _cleanup(self, conn: sqlite3.Connection) -> None:
        at, kept_at = now(), self.clock()
        for statement in _CLEANUP:
            conn.execute(statement, (at,))
        for statement in _CLEANUP_KEPT:
            conn.execute(statement, (kept_at,))

    # -- groups and chords -----------------------------------------------------------------

    joins_chords = True

    async def save_group(self, group_id: str, meta: Meta, *, expires: float | None) -> None:
        expires_at = None if expires is None else self.clock() + expires
        data = json_text(meta).encode()

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(_SET_GROUP, (group_id, data, expires_at))

        await self._db.run(save)

    async def restore_group(self, group_id: str) -> Meta | None:
        at = self.clock()

        def restore(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT data, expires_at FROM celeriac_groups WHERE group_id = ?", (group_id,)
            ).fetchone()
            if row is None or (row[1] is not None and row[1] <= at):
                return None
            return bytes(row[0])

        data = await self._db.run(restore)
        return None if data is None else decode(data)

    async def forget_group(self, group_id: str) -> None:
        def forget(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM celeriac_groups WHERE group_id = ?", (group_id,))

        await self._db.run(forget)

    async def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        at = self.clock()
        expires_at = None if expires is None else at + expires

        def start(conn: sqlite3.Connection) -> None:
            chord = _live_chord(conn, group_id, at)
            # No claim: a chord started again (a frozen one applied twice) runs anew.
            conn.execute(_SET_CHORD, (group_id, size, chord.received, expires_at, None, None))

        await self._db.transaction(start)

    async def chord_part(
        self, group_id: str, part: ChordPart, *, expires: float | None
    ) -> list[ChordPart] | None:
        at = self.clock()
        token = uuid.uuid4().hex
        values = (group_id, part_key(part), part.index, part_member(part))

        def record(conn: sqlite3.Connection) -> list[tuple[int | None, bytes]] | None:
            chord = _live_chord(conn, group_id, at)
            if chord.holder == DONE:
                return None
            received = chord.received + conn.execute(_ADD_PART, values).rowcount
            expires_at = chord.expires_at if expires is None else at + expires
            claimed = chord.size == received and chord.holder is None
            holder, held_until = chord.holder, chord.held_until
            if claimed:
                holder, held_until = token, at + CHORD_CLAIM_SECONDS
            conn.execute(
                _SET_CHORD, (group_id, chord.size, received, expires_at, holder, held_until)
            )
            if not claimed:
                return None
            return [(idx, bytes(member)) for idx, member in conn.execute(_PARTS, (group_id,))]

        parts = await self._db.transaction(record)
        if parts is None:
            return None
        self._claims[group_id] = token
        return [decode_part(member, index) for index, member in parts]

    async def chord_done(self, group_id: str) -> None:
        """Drop the chord, if this instance's :meth:`chord_part` holds its claim still
        (else another caller took it over: its ``chord_done`` drops it)."""
        token = self._claims.pop(group_id, None)
        if token is None:
            return
        at = self.clock()
        done_until = at + CHORD_DONE_SECONDS

        def done(conn: sqlite3.Connection) -> None:
            if _live_chord(conn, group_id, at).holder != token:
                return
            conn.execute(_DROP_PARTS, (group_id,))
            conn.execute(_SET_CHORD, (group_id, None, 0, done_until, DONE, done_until))

        await self._db.transaction(done)

    # -- counters and leases ---------------------------------------------------------------

    async def _incr(self, key: str, by: int, expires: float | None) -> int:
        at = self.clock()

        def incr(conn: sqlite3.Connection) -> int:
            row = conn.execute(_COUNTER, (key,)).fetchone()
            value, expires_at = _live(row, at)
            if expires is not None:
                expires_at = at + expires
            conn.execute(_SET_COUNTER, (key, value + by, expires_at))
            return value + by

        return await self._db.transaction(incr)

    async def _get_counter(self, key: str) -> int:
        def read(conn: sqlite3.Connection) -> int:
            return _live(conn.execute(_COUNTER, (key,)).fetchone(), self.clock())[0]

        return await self._db.run(read)

    async def _delete_counter(self, key: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM celeriac_counters WHERE key = ?", (key,))

        await self._db.run(delete)

    async def _acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        at = self.clock()

        def acquire(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_LEASE, (name,)).fetchone()
            if row is not None and row[0] != holder and row[1] > at:
                return False
            conn.execute(_SET_LEASE, (name, holder, at + ttl))
            return True

        return await self._db.transaction(acquire)

    async def _release_lease(self, name: str, holder: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(_RELEASE_LEASE, (name, holder))

        await self._db.run(release)

    async def _advance_counter(self, key: str, to: int, expires: float | None) -> int:
        at = self.clock()

        def advance(conn: sqlite3.Connection) -> int:
            value, expires_at = _live(conn.execute(_COUNTER, (key,)).fetchone(), at)
            if value < to:
                expires_at = expires_at if expires is None else at + expires
                conn.execute(_SET_COUNTER, (key, to, expires_at))
            return value

        return await self._db.transaction(advance)

    async def _init_counter(self, key: str, value: int, expires: float | None) -> int:
        at = self.clock()
        expires_at = None if expires is None else at + expires

        def init(conn: sqlite3.Connection) -> int:
            conn.execute(_INIT_COUNTER, (key, value, expires_at, at))
            return int(conn.execute(_COUNTER, (key,)).fetchone()[0])

        return await self._db.transaction(init)

    # -- documents -------------------------------------------------------------------------

    async def _put_document(self, collection: str, name: str, data: bytes) -> None:
        def put(conn: sqlite3.Connection) -> None:
            conn.execute(_SET_DOCUMENT, (collection, name, data))

        await self._db.run(put)

    async def _documents(self, collection: str) -> dict[str, bytes]:
        def read(conn: sqlite3.Connection) -> dict[str, bytes]:
            rows = conn.execute(
                "SELECT name, data FROM celeriac_documents WHERE collection = ?", (collection,)
            )
            return {str(name): bytes(data) for name, data in rows}

        return await self._db.run(read)

    async def _delete_document(self, collection: str, name: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute(
                    "DELETE FROM celeriac_documents WHERE collection = ? AND name = ?",
                    (collection, name),
                ).rowcount
            )

        return await self._db.run(delete)

    # -- rate limits -----------------------------------------------------------------------

    async def _acquire_rate(self, key: str, limit: int, period: float, burst: int) -> float:
        def acquire(conn: sqlite3.Connection) -> float:
            # Read once the write lock is held: starts are recorded in the order of their
            # times, whichever process waited longer for the lock.
            at = self.clock()
            conn.execute(
                "DELETE FROM celeriac_rate_starts WHERE key = ? AND at <= ?", (key, at - period)
            )
            starts = [
                float(start)
                for (start,) in conn.execute(
                    "SELECT at FROM celeriac_rate_starts WHERE key = ? ORDER BY at", (key,)
                )
            ]
            row = conn.execute(_RATE, (key,)).fetchone()
            next_retry, idle_at = (0.0, 0.0) if row is None or row[1] <= at else row
            wait = rate_wait(starts, at, limit, period, burst)
            if wait <= 0:
                conn.execute("INSERT INTO celeriac_rate_starts (key, at) VALUES (?, ?)", (key, at))
                conn.execute(_SET_RATE, (key, next_retry, max(idle_at, at + period)))
                return 0.0
            retry, next_retry = spaced_retry(at, wait, next_retry, period, limit)
            conn.execute(_SET_RATE, (key, next_retry, max(idle_at, next_retry, at + period)))
            return retry - at

        return await self._db.transaction(acquire)

    # -- revocations -----------------------------------------------------------------------

    async def _add_revoked(self, task_ids: list[str], until: float) -> None:
        at = self.clock()

        def add(conn: sqlite3.Connection) -> None:
            conn.executemany(_ADD_REVOKED, [(task_id, until) for task_id in task_ids])
            conn.execute("DELETE FROM celeriac_revoked WHERE until <= ?", (at,))

        await self._db.transaction(add)

    async def _revoked(self) -> dict[str, float]:
        def read(conn: sqlite3.Connection) -> dict[str, float]:
            rows = conn.execute(
                "SELECT task_id, until FROM celeriac_revoked WHERE until > ?", (self.clock(),)
            )
            return {str(task_id): float(until) for task_id, until in rows}

        return await self._db.run(read)

    # -- streams ---------------------------------------------------------------------------

    async def _events_since(self, task_id: str, after: int | None) -> EventLog:
        return await self._db.run(partial(_read_events, task_id=task_id, after=after))

    @asynccontextmanager
    async def _watch_task(self, task_id: str) -> AsyncIterator[Changes]:
        if self._closed:
            raise errors.BrokerError(f"the result backend {self.url} is closed")
        self._start_watching()
        changes = _Changes(self.poll_interval)
        self._streams.add(changes.signal)
        try:
            yield changes
        finally:
            self._streams.discard(changes.signal)

    # -- waiting ---------------------------------------------------------------------------

    async def _wait(self, task_id: str, timeout: float | None) -> bytes:
        if self._closed:
            raise errors.BrokerError(f"the result backend {self.url} is closed")
        self._start_watching()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        self._fresh.add(task_id)
        self._signal.set()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError as exc:
            raise self.not_ready(task_id, timeout) from exc
        finally:
            self._drop_waiter(task_id, future)

    def _drop_waiter(self, task_id: str, future: asyncio.Future[bytes]) -> None:
        futures = self._waiters.get(task_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._waiters[task_id]

    def _start_watching(self) -> None:
        if self._watcher is not None:
            return
        listener = Listener(channel_directory(self.path, "results"))
        listener.open()
        listener.subscribe(self._on_wakeup)
        self._listener = listener
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _on_wakeup(self) -> None:
        self._notified = True
        self._signal.set()
        for stream in self._streams:
            stream.set()

    async def _watch(self) -> None:
        """Resolve waiters: one query per wake-up for every id waited on in this instance."""
        while True:
            timeout = self.poll_interval if self._waiters else None
            woke = await wait_for_signal(self._signal, timeout)
            self._signal.clear()
            everything = self._notified or not woke  # not woke: the safety poll
            self._notified = False
            ids = list(self._waiters) if everything else list(self._fresh & self._waiters.keys())
            self._fresh.clear()
            if ids:
                await self._check(ids)

    async def _check(self, ids: list[str]) -> None:
        try:
            found = await self._db.run(partial(_read_ready, ids=ids))
        except errors.BrokerError as exc:
            # The file cannot be read now (locked, an I/O error): the waiters keep waiting,
            # until their own timeouts, and the next wake-up or safety poll reads again.
            if not self._unreadable:
                self._unreadable = True
                log.warning("results: %s; waiting callers keep waiting and it is read again", exc)
            return
        if self._unreadable:
            self._unreadable = False
            log.warning("results: the SQLite file %r can be read again", self.path)
        for task_id, data in found.items():
            for future in self._waiters.pop(task_id, []):
                if not future.done():
                    future.set_result(data)


class _Changes(Changes):
    """A stream's wake-up: the channel's, or the safety poll's."""

    def __init__(self, poll_interval: float) -> None:
        self.signal = asyncio.Event()
        self.poll_interval = poll_interval

    async def wait(self, timeout: float | None) -> None:
        limit = self.poll_interval if timeout is None else min(timeout, self.poll_interval)
        await wait_for_signal(self.signal, limit)
        self.signal.clear()


class _Chord(NamedTuple):
    """A chord's row as it stands (what expired dropped): Redis's ``.s``, ``.c``, and how
    many parts ``.j`` holds."""

    size: int | None
    received: int
    expires_at: float | None
    holder: str | None
    held_until: float | None


def _live_chord(conn: sqlite3.Connection, group_id: str, at: float) -> _Chord:
    """The chord's row at ``at``; its parts are deleted here if they expired. Run inside
    the transaction that changes it."""
    row = conn.execute(_CHORD, (group_id,)).fetchone()
    if row is None:
        return _Chord(None, 0, None, None, None)
    size, received, expires_at, holder, held_until = row
    if expires_at is not None and expires_at <= at:
        conn.execute(_DROP_PARTS, (group_id,))
        size, received, expires_at = None, 0, None
    if holder is not None and (held_until is None or held_until <= at):
        holder, held_until = None, None
    return _Chord(size, received, expires_at, holder, held_until)


def _create_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")


def _live(row: tuple[int, float | None] | None, at: float) -> tuple[int, float | None]:
    """A counter row's value and expiry; (0, None) when missing or expired at ``at``."""
    if row is None or (row[1] is not None and row[1] <= at):
        return 0, None
    return int(row[0]), row[1]


def _read_events(conn: sqlite3.Connection, task_id: str, after: int | None) -> Log:
    """One read transaction, so the events, their count and the record agree."""
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            "SELECT data, expires_at FROM celeriac_results WHERE task_id = ?", (task_id,)
        ).fetchone()
        count = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM celeriac_events WHERE task_id = ?", (task_id,)
        ).fetchone()[0]
        first = count if after is None else after + 1
        events = conn.execute(
            "SELECT data FROM celeriac_events WHERE task_id = ? AND seq >= ? ORDER BY seq",
            (task_id, first),
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    record = None
    if row is not None and (row[1] is None or row[1] > now()):
        record = bytes(row[0])
    return Log([bytes(data) for (data,) in events], int(count), record)


def _read_ready(conn: sqlite3.Connection, ids: list[str]) -> dict[str, bytes]:
    at = now()
    found: dict[str, bytes] = {}
    for chunk in chunks(ids):
        rows = conn.execute(
            "SELECT task_id, data FROM celeriac_results WHERE ready = 1"
            f" AND (expires_at IS NULL OR expires_at > ?) AND task_id IN ({marks(len(chunk))})",
            (at, *chunk),
        )
        found.update((task_id, bytes(data)) for task_id, data in rows)
    return found
