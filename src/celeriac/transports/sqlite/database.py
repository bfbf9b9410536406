"""One SQLite connection per instance, driven from one dedicated thread.

The broker and the result backend share this helper, and may share one file: the schema
below holds both the queue tables and the result tables (records, event logs, counters,
leases, saved groups, chord joins), all prefixed ``celeriac_`` so that the file can also be
an application's own database. Every table is created if missing each time a file is
opened, so a file made by an older version gains the tables it lacks. A message is stored
as one blob: a length-prefixed JSON header (everything but the body), then the raw body
bytes.

Durability trade-off: the file runs in WAL mode with ``synchronous=NORMAL``. A committed
transaction then survives the crash of any process (``kill -9`` included), because it is
in the WAL file the moment the commit returns; what a power loss or kernel crash can cost
is the last few transactions before the WAL was synced. ``synchronous=FULL`` would close
that gap for an fsync per commit, which a task queue on one machine rarely wants.

Every statement runs on the instance's own single-thread executor, so the event loop never
blocks on the disk, and statements that belong together run as one job in one transaction.

Permissions: the file holds task arguments and results, so a file this module creates is
owner-only (0600) whatever the umask, and SQLite gives its ``-wal``, ``-shm`` and
``-journal`` files the database file's mode. A file that already exists keeps its mode (its
owner may have opened it to a group on purpose), and so does an existing directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote, unquote, urlsplit

from celeriac.errors import BrokerError, ConfigurationError
from celeriac.protocol.envelope import Envelope

T = TypeVar("T")
P = TypeVar("P")

#: The default database, relative to the working directory.
DEFAULT_URL = "sqlite:///celeriac.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    envelope BLOB NOT NULL,
    redelivered INTEGER NOT NULL DEFAULT 0,
    holder TEXT
);
CREATE INDEX IF NOT EXISTS celeriac_messages_waiting
    ON celeriac_messages (queue, priority DESC, id, visible_at) WHERE holder IS NULL;
CREATE INDEX IF NOT EXISTS celeriac_messages_held
    ON celeriac_messages (holder) WHERE holder IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_holders (
    holder TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_space TEXT,
    started REAL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_dead_letters (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    envelope BLOB NOT NULL,
    reason TEXT NOT NULL,
    died_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_results (
    task_id TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    ready INTEGER NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS celeriac_results_expiry
    ON celeriac_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    expires_at REAL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS celeriac_events_expiry
    ON celeriac_events (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS celeriac_counters_expiry
    ON celeriac_counters (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_published_once (
    key TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_revoked (
    task_id TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_groups (
    group_id TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS celeriac_groups_expiry
    ON celeriac_groups (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_chords (
    group_id TEXT PRIMARY KEY,
    size INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    holder TEXT,
    held_until REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS celeriac_chords_expiry
    ON celeriac_chords (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_chord_parts (
    group_id TEXT NOT NULL,
    part TEXT NOT NULL,
    idx INTEGER,
    member BLOB NOT NULL,
    PRIMARY KEY (group_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS celeriac_broadcasts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    sent_at REAL NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_broadcasts_age ON celeriac_broadcasts (sent_at);
"""

_OPEN_ATTEMPTS = 5
#: The mode of a database file this module creates: it holds task arguments and results.
FILE_MODE = 0o600
_HEADER_SIZE = struct.Struct(">I")
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))


def path_from_url(url: str) -> str:
    """The absolute file path of a ``sqlite:///`` URL, SQLAlchemy-style.

    ``sqlite:///celeriac.db`` is relative to the working directory *now* (a later chdir
    must not move the queue); ``sqlite:////var/lib/app.db`` is absolute.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
    if parts.netloc:
        raise ConfigurationError(
            f"SQLite URL {url!r} has a host: use three slashes for a relative path "
            "(sqlite:///celeriac.db) or four for an absolute one (sqlite:////var/lib/q.db)"
        )
    path = unquote(parts.path)[1:]
    if not path or path.endswith("/"):
        raise ConfigurationError(
            f"SQLite URL {url!r} names no file: use e.g. sqlite:///celeriac.db"
            " (in-memory SQLite cannot be shared between processes; use memory:// for tests)"
        )
    return os.path.abspath(path)


def absolute_url(url: str) -> str:
    """``url`` naming the file it opens, for a log line: ``sqlite:///celeriac.db`` run from
    /srv/app is ``sqlite:////srv/app/celeriac.db``. Other URLs come back unchanged."""
    if not url.startswith("sqlite:"):
        return url
    query = urlsplit(url).query
    return f"sqlite:///{quote(path_from_url(url))}" + (f"?{query}" if query else "")


class Database:
    """A handle on one SQLite file; every call is a job on the file's database thread.

    Handles on the same file in the same event loop share one connection and one thread
    (:class:`_Shared`): a broker and a result backend on one file then never wait for each
    other's write lock, and their batched writes commit in the same transactions.
    """

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._shared: _Shared | None = None

    async def open(self) -> None:
        """Create the file (and its directory) if needed, switch to WAL, create tables.

        The first handle to open a file sets its ``busy_timeout``."""
        if self._shared is None:
            self._shared = await _Shared.acquire(self.path, self.busy_timeout)

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job(conn)`` on the database thread; each statement commits on its own
        unless the job opens a transaction with :func:`atomically`."""
        return await self._open_shared().run(job)

    async def transaction(
        self,
        job: Callable[[sqlite3.Connection], T],
        *,
        then: Callable[[], None] | None = None,
    ) -> T:
        """Run ``job(conn)`` in one transaction, then ``then()`` on the same thread.

        ``then`` runs right after the commit (typically a wake-up for other processes),
        off the event loop, and only if the commit happened.
        """

        def job_then_notify(conn: sqlite3.Connection) -> T:
            result = atomically(conn, job)
            if then is not None:
                then()
            return result

        return await self.run(job_then_notify)

    async def transaction_in_parts(
        self,
        write: Callable[[sqlite3.Connection, P], None],
        parts: Iterable[P],
        *,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Run ``write(conn, part)`` for each of ``parts`` in ONE transaction, then ``then()``.

        The parts are made on the event loop (pausing between two, so other work goes on)
        while the database thread writes the ones before: making and writing overlap, as
        they would in one transaction per part, yet everything commits or nothing does. An
        error while making a part, or a cancellation, rolls the whole transaction back.
        """
        pending: queue.SimpleQueue[P | _End] = queue.SimpleQueue()

        def write_parts(conn: sqlite3.Connection) -> None:
            while not isinstance(part := pending.get(), _End):
                write(conn, part)
            if not part.complete:
                raise _Abandoned()

        writing = asyncio.ensure_future(self.transaction(write_parts, then=then))
        complete = False
        try:
            for part in parts:
                pending.put(part)
                if writing.done():
                    break  # it failed: the error is raised below
                await asyncio.sleep(0)
            else:
                complete = True
        finally:
            # Always sent, even on an error or a cancellation: the database thread waits
            # for it, and a transaction not complete is rolled back.
            pending.put(_End(complete))
            if not complete:
                writing.add_done_callback(_retrieve)
        await writing

    def write(self, batch: WriteBatch[T], item: T) -> Awaitable[None]:
        """Add ``item`` to the file's next round of batched writes (at once, not when
        awaited); the result resolves once the round has committed."""
        return self._open_shared().write(batch, item)

    async def flushed(self) -> None:
        """Wait for every batched write added so far."""
        if self._shared is not None:
            await self._shared.flushed()

    def _open_shared(self) -> _Shared:
        if self._shared is None:
            raise BrokerError(f"the SQLite database {self.path!r} is not open: call open()")
        return self._shared

    async def close(self) -> None:
        """Let go of the file; the last handle closes the connection and ends the thread."""
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.release()


class _Shared:
    """The connection, thread and write round of one file in one event loop."""

    _instances: ClassVar[dict[tuple[str, asyncio.AbstractEventLoop], _Shared]] = {}

    def __init__(
        self, path: str, busy_timeout: float, key: tuple[str, asyncio.AbstractEventLoop]
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._key = key
        self._users = 0
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            1, thread_name_prefix="celeriac-sqlite"
        )
        self._conn: sqlite3.Connection | None = None
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening: asyncio.Task[None] | None = None  # referenced so it is not collected
        # The write round: what is added while one round commits forms the next.
        self._round: dict[WriteBatch[Any], list[Any]] = {}
        self._round_done: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def acquire(cls, path: str, busy_timeout: float) -> _Shared:
        loop = asyncio.get_running_loop()
        # A loop closed without closing its handles leaves its entry behind: drop it.
        for stale in [key for key in cls._instances if key[1].is_closed()]:
            del cls._instances[stale]
        key = (path, loop)
        shared = cls._instances.get(key)
        if shared is None:
            shared = cls._instances[key] = cls(path, busy_timeout, key)
            shared._opening = loop.create_task(shared._open())
        shared._users += 1
        try:
            await asyncio.shield(shared._opened)
        except BaseException:
            await shared.release()
            raise
        return shared

    async def _open(self) -> None:
        try:
            self._conn = await self._submit(self._connect)
        except BaseException as exc:
            self._opened.set_exception(exc)
        else:
            self._opened.set_result(None)

    def _connect(self) -> sqlite3.Connection:
        try:
            directory = os.path.dirname(self.path)
            os.makedirs(directory, exist_ok=True)
            create_private(self.path)
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                # Multi-row statements come in every size up to ROWS_PER_STATEMENT, for
                # acks and for results: keep them all prepared.
                cached_statements=4 * ROWS_PER_STATEMENT,
            )
        except (OSError, sqlite3.Error) as exc:
            raise BrokerError(
                f"cannot open the SQLite database {self.path!r}: {exc}. Make sure its directory"
                " exists or can be created and is writable, or point the URL at another file"
                " (sqlite:///relative/path.db or sqlite:////absolute/path.db)"
            ) from exc
        try:
            self._prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise BrokerError(f"cannot prepare the SQLite database {self.path!r}: {exc}") from exc
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment alone with the file; a process opening it at the
        # same instant can make that fail once even with a busy timeout, so try again.
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(partial(self._guard, job))

    def _guard(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise BrokerError(f"the SQLite database {self.path!r} is closed")
        try:
            return job(self._conn)
        except sqlite3.OperationalError as exc:
            hint = ""
            if "locked" in str(exc) or "busy" in str(exc):
                hint = (
                    f": another process held the write lock for over {self.busy_timeout:g} s"
                    " (raise the busy_timeout option if that is expected)"
                )
            raise BrokerError(f"SQLite {self.path!r}: {exc}{hint}") from exc
        except sqlite3.Error as exc:
            raise BrokerError(f"SQLite {self.path!r}: {exc}") from exc

    async def _submit(self, job: Callable[[], T]) -> T:
        if self._executor is None:
            raise BrokerError(f"the SQLite database {self.path!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    # -- batched writes ---------------------------------------------------------------------

    def write(self, batch: WriteBatch[T], item: T) -> Awaitable[None]:
        self._round.setdefault(batch, []).append(item)
        done = self._round_done
        if done is None:
            done = self._round_done = asyncio.get_running_loop().create_future()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        # Shielded: a cancelled writer must not cancel the round its neighbours wait for.
        return asyncio.shield(done)

    async def _flush(self) -> None:
        try:
            while self._round_done is not None:
                writes, done = self._round, self._round_done
                self._round, self._round_done = {}, None
                try:
                    await self.run(partial(_commit_round, writes))
                except asyncio.CancelledError:
                    done.cancel()
                    raise
                except Exception as exc:
                    done.set_exception(exc)
                    done.exception()  # retrieved here: its awaiters may all be gone
                else:
                    done.set_result(None)
        finally:
            self._flusher = None

    async def flushed(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    # -- closing ----------------------------------------------------------------------------

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._instances.get(self._key) is self:
            del self._instances[self._key]
        await self.flushed()
        if self._executor is None:
            return
        try:
            await self._submit(self._disconnect)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _disconnect(self) -> None:
        # On the database thread, after every job queued before it.
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _End:
    """The last item of a transaction in parts; ``complete`` is False when it is abandoned."""

    def __init__(self, complete: bool) -> None:
        self.complete = complete


class _Abandoned(Exception):
    """Rolls back a transaction in parts whose maker failed (its own error is raised)."""


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # an abandoned transaction's _Abandoned: nobody awaits it


def create_private(path: str) -> None:
    """Create an empty database file at ``path``, mode :data:`FILE_MODE`, unless one exists.

    SQLite would create it with 0644 under the usual umask: readable by every local user.
    An existing file is left as it is, whatever its mode.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return  # another process may have created it this instant: it made it private
    try:
        if hasattr(os, "fchmod"):  # the umask may have taken more than group and others
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _commit_round(writes: dict[WriteBatch[Any], list[Any]], conn: sqlite3.Connection) -> None:
    """One transaction for every batch's items, then each batch's ``then`` (after commit)."""

    def write_all(conn: sqlite3.Connection) -> None:
        for batch, items in writes.items():
            batch.write_items(conn, items)

    atomically(conn, write_all)
    for batch, items in writes.items():
        batch.committed(items)


def atomically(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``job(conn)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if it raises).

    IMMEDIATE takes the write lock up front: a transaction that began as a reader and then
    wrote could fail with SQLITE_BUSY at once, without waiting for the busy timeout.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = job(conn)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


#: Rows per multi-row statement. A statement is one ``sqlite3_step``, and the database thread
#: gives up the GIL around every step: one step per chunk instead of one per row spares the
#: event loop a GIL hand-over per row. 200 rows of 4 values stays far below SQLite's bound
#: parameter limit.
ROWS_PER_STATEMENT = 200


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most :data:`ROWS_PER_STATEMENT`."""
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        yield items[start : start + ROWS_PER_STATEMENT]


@cache
def marks(count: int, width: int = 1) -> str:
    """Placeholders: ``?,?,?`` for ``count`` values, or ``(?,?),(?,?)`` for rows of ``width``."""
    if width == 1:
        return ",".join("?" * count)
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * count)


def encode_envelope(envelope: Envelope) -> bytes:
    """JSON for the metadata, so the file stays readable with any SQLite tool; the body
    stays raw bytes whatever serializer made it."""
    header = {
        "content_type": envelope.content_type,
        "content_encoding": envelope.content_encoding,
        "headers": envelope.headers,
        "properties": envelope.properties,
    }
    try:
        encoded = _HEADER_ENCODER.encode(header).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the SQLite broker stores message headers and properties as JSON: {exc}"
        ) from exc
    return _HEADER_SIZE.pack(len(encoded)) + encoded + bytes(envelope.body)


def decode_envelope(blob: bytes) -> Envelope:
    """The inverse of :func:`encode_envelope`; raises (ValueError, mostly) on bytes it did
    not make, so that a row written by hand never yields an envelope of the wrong types."""
    (size,) = _HEADER_SIZE.unpack_from(blob)
    start = _HEADER_SIZE.size
    if start + size > len(blob):
        raise ValueError(f"its header claims {size} bytes, past the end of {len(blob)}")
    header = json.loads(blob[start : start + size])
    if not isinstance(header, dict):
        raise ValueError(f"its header is a JSON {type(header).__name__}, not an object")
    for name, kind in _HEADER_FIELDS:
        if not isinstance(header.get(name), kind):
            found = type(header.get(name)).__name__
            raise ValueError(f"its {name} is a {found}, not a {kind.__name__}")
    return Envelope(
        bytes(blob[start + size :]),
        header["content_type"],
        header["content_encoding"],
        header["headers"],
        header["properties"],
    )


#: What :func:`encode_envelope` writes in the header, and of which type.
_HEADER_FIELDS: tuple[tuple[str, type], ...] = (
    ("content_type", str),
    ("content_encoding", str),
    ("headers", dict),
    ("properties", dict),
)


class WriteBatch(Generic[T]):
    """One kind of batched write (acks, result records) to a :class:`Database`.

    Items added while a round is being written form the next round, so a busy worker
    writes many in one commit and an idle one adds no delay. Every batch of one file shares
    the rounds: a result record and the ack after it may commit together. ``add`` returns
    once its item is committed (or raises the round's error).
    """

    def __init__(
        self,
        db: Database,
        write: Callable[[sqlite3.Connection, list[T]], None],
        *,
        then: Callable[[list[T]], None] | None = None,
    ) -> None:
        self._db = db
        self._write = write
        self._then = then

    def add(self, item: T) -> Awaitable[None]:
        """Queue ``item`` for the next round; await the result to know it is committed."""
        return self._db.write(self, item)

    def write_items(self, conn: sqlite3.Connection, items: list[T]) -> None:
        """Database thread, inside the round's transaction."""
        self._write(conn, items)

    def committed(self, items: list[T]) -> None:
        """Database thread, after the round's commit."""
        if self._then is not None:
            self._then(items)

    async def close(self) -> None:
        """Wait for the writes already added."""
        await self._db.flushed()
