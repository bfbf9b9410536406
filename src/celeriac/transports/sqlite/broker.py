"""``sqlite:///path``: the default broker, one durable SQLite file serving a whole machine.

Several worker processes and producers share the file (see ``database.py`` for the
connection, the schema and the durability trade-off). A message row is *waiting* while its
``holder`` is NULL and *held* while a consumer has it; a consumer claims rows atomically
with ``UPDATE ... RETURNING``, so two processes never get the same message.

Holders and liveness. A broker that consumes registers one holder row
(``hostname:pid:random``) and refreshes its heartbeat every couple of seconds for as long as
its event loop runs, so a long task never loses its message. Any consumer sweeps, when it
starts and every ``sweep_interval`` seconds: a holder whose heartbeat is older than
``visibility_timeout`` is dead, and so at once is a holder on this machine whose process is
gone, is a zombie, or is a newer process that reused the pid (the process start time is
stored with the pid, and so is the pid namespace, since containers may share a hostname).
The messages of a dead holder go back to their queue, marked redelivered. A broker that
closes cleanly gives back what it holds itself.

Poison rows. Another program can write anything into the table: a row that does not read
as a message (an envelope that does not decode, a column of the wrong type) is moved to the
dead letters, with the reason and its envelope's raw bytes, by the consumer that claims it,
which goes on with the rest; ``dead_letters()`` shows such a letter's raw bytes as its body.

Batches. ``publish_many`` stores all its messages in one transaction, and ``send_many``
hands it a whole batch (``whole_batches``): a producer killed mid-batch queues none of it.

Wake-ups. Every change that makes a message visible (publish, requeue, defer, release)
notifies the ``tasks`` channel of ``wakeup.py`` after its commit; an idle consumer
sleeps until a wake-up, the earliest future ``visible_at`` among its queues, or the
``poll_interval`` safety poll, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sqlite3
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from functools import partial
from typing import Any

from celeriac.errors import BrokerError
from celeriac.protocol.envelope import Envelope
from celeriac.transports.background import Background
from celeriac.transports.broker import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Broker,
    Claimed,
    DeadLetter,
    Delivery,
    ExchangeKind,
    PrefetchWindow,
    PrefetchWindows,
    PublishRequest,
    Subscription,
    check_consume,
    claim_loop,
    now,
)
from celeriac.transports.options import Option, checked_options
from celeriac.transports.sqlite.database import (
    Database,
    WriteBatch,
    absolute_url,
    atomically,
    chunks,
    decode_envelope,
    encode_envelope,
    marks,
    path_from_url,
)
from celeriac.transports.sqlite.fanout import Broadcaster
from celeriac.transports.sqlite.wakeup import Listener, Notifier, channel_directory

log = logging.getLogger(__name__)

_HOSTNAME = socket.gethostname()
_EPSILON = 0.001  # sleep just past an eta, so the claim after it finds the message visible

#: Messages per part of a batch's transaction: the loop encodes one part while the database
#: thread inserts the one before.
_ROWS_PER_PART = 1000
_INSERT = (
    "INSERT INTO celeriac_messages (queue, priority, visible_at, envelope) VALUES (?, ?, ?, ?)"
)


def _fetchable(column: str) -> str:
    """``column`` as SQLite can always hand it over: text comes back as its raw bytes, since
    text that is not UTF-8 (a row written by hand) would fail the fetch of every row."""
    return f"CASE typeof({column}) WHEN 'text' THEN CAST({column} AS BLOB) ELSE {column} END"


# A visible_at that is not a number (written by hand) never compares as due: such a row is
# claimed at once, and goes to the dead letters, rather than sit in the queue forever.
_CLAIM = f"""
UPDATE celeriac_messages SET holder = ?
WHERE id IN (
    SELECT id FROM celeriac_messages
    WHERE holder IS NULL AND queue IN ({{marks}})
    AND (visible_at <= ? OR typeof(visible_at) NOT IN ('real', 'integer'))
    ORDER BY priority DESC, id LIMIT ?
)
RETURNING id, queue, {_fetchable("priority")}, {_fetchable("envelope")},
    {_fetchable("redelivered")}, {_fetchable("visible_at")}
"""
_NEXT_ETA = """
SELECT MIN(visible_at) FROM celeriac_messages
WHERE holder IS NULL AND queue IN ({marks}) AND visible_at > ?
AND typeof(visible_at) IN ('real', 'integer')
"""
# In SQL, so that the envelope's bytes are kept exactly as they are, whatever their type.
_BURY_POISON = """
INSERT INTO celeriac_dead_letters (queue, envelope, reason, died_at)
SELECT queue, CAST(IFNULL(envelope, x'') AS BLOB), ?, ? FROM celeriac_messages
WHERE id = ? AND holder = ?
"""
#: publish_once: the key's sequence moves forward (one row changed) or the message is not sent.
_ADVANCE_ONCE = """
INSERT INTO celeriac_published_once (key, sequence) VALUES (?1, ?2)
ON CONFLICT (key) DO UPDATE SET sequence = excluded.sequence WHERE excluded.sequence > sequence
"""

_RELEASE_ORPHANS = """
UPDATE celeriac_messages SET holder = NULL, redelivered = 1
WHERE holder IS NOT NULL AND holder NOT IN (SELECT holder FROM celeriac_holders)
"""
_HAS_ORPHANS = """
SELECT 1 FROM celeriac_messages
WHERE holder IS NOT NULL AND holder NOT IN (SELECT holder FROM celeriac_holders) LIMIT 1
"""


def process_identity(pid: int) -> tuple[str, float] | None:
    """``(state, start time)`` of a process from ``/proc``; None where there is no ``/proc``.

    The start time (field 22, clock ticks since boot) tells a process from a later one that
    reuses its pid. A process that is gone reads as state ``"X"`` (dead).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except FileNotFoundError:
        return ("X", -1.0) if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), float(fields[19])


def process_alive(pid: int, started: float | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    identity = process_identity(pid)
    if identity is None:
        return True
    state, start = identity
    if state in ("Z", "X"):  # a zombie runs nothing: its parent has not reaped it yet
        return False
    return started is None or start == started


def pid_space() -> str | None:
    """This process's pid namespace, where the platform shows it.

    Containers can share a hostname (``--network host``) yet not see each other's pids:
    a pid is only judged by a process in the same namespace.
    """
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


_PID_SPACE = pid_space()
_Holder = tuple[str, str, int, str | None, float | None, float]


def _holder_dead(row: _Holder, deadline: float) -> bool:
    _, hostname, pid, space, started, heartbeat = row
    if heartbeat < deadline:
        return True
    local = hostname == _HOSTNAME and space == _PID_SPACE
    return local and not process_alive(pid, started)


#: ``broker_transport_options`` (see :mod:`celeriac.transports.options`).
_OPTIONS = {
    "visibility_timeout": Option(float, 30.0),  # a holder silent that long is dead
    "sweep_interval": Option(float, 2.0),  # between dead-holder sweeps while consuming
    "poll_interval": Option(float, 1.0),  # safety re-check when no wake-up came
    "busy_timeout": Option(float, 10.0),  # to wait for another process's write lock
}


class SQLiteBroker(Broker):
    """Queues in a SQLite file shared by every process on the machine.

    Options (``broker_transport_options``; another name or a value of the wrong type is a
    ConfigurationError): ``visibility_timeout`` (30.0 s: a holder silent that long is dead),
    ``sweep_interval`` (2.0 s between dead-holder sweeps while consuming), ``poll_interval``
    (1.0 s: safety re-check when no wake-up came), ``busy_timeout`` (10.0 s to wait for
    another process's write lock).
    """

    def describe(self) -> str:
        """The file by its absolute path: a relative one depends on the current directory."""
        return absolute_url(self.url)

    whole_batches = True  # publish_many is one transaction: a batch is all or nothing
    publishes_once = True  # the key and the message in one transaction

    def __init__(self, url: str, **settings: Any) -> None:  # settings: see Broker
        super().__init__(url, **settings)
        self.path = path_from_url(url)
        opts = checked_options(
            self.options, _OPTIONS, "broker_transport_options", "the SQLite broker"
        )
        self.visibility_timeout: float = opts["visibility_timeout"]
        self.sweep_interval: float = opts["sweep_interval"]
        self.poll_interval: float = opts["poll_interval"]
        self._db = Database(self.path, busy_timeout=opts["busy_timeout"])
        self._notifier = Notifier(channel_directory(self.path, "tasks"))  # database thread only
        self._listener: Listener | None = None
        self._holder: str | None = None
        self._holding = asyncio.Lock()
        self._windows = PrefetchWindows()
        self._tasks = Background()
        self._maintenance: asyncio.Task[None] | None = None
        self._acks: WriteBatch[int] = WriteBatch(self._db, self._delete)
        self._broadcaster = Broadcaster(self._db, self.path)
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        """Stop consuming, flush acks, give back every held message, drop the holder row."""
        if self._closed:
            return
        await self.close_subscriptions()
        self._closed = True
        self._windows.wake_all()
        if self._maintenance is not None:
            self._maintenance.cancel()
        # Let claims and ack batches in flight finish, so what they hold is given back below.
        await self._tasks.settle()
        await self._acks.close()
        if self._holder is not None:
            with contextlib.suppress(BrokerError):
                await self._db.transaction(self._unregister, then=self._notifier.notify)
        if self._listener is not None:
            self._listener.close()
        await self._db.close()
        self._notifier.close()
        self._broadcaster.close()

    def _unregister(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE celeriac_messages SET holder = NULL, redelivered = 1 WHERE holder = ?",
            (self._holder,),
        )
        conn.execute("DELETE FROM celeriac_holders WHERE holder = ?", (self._holder,))

    # -- producing -------------------------------------------------------------------------

    async def _publish(self, requests: Sequence[PublishRequest]) -> None:
        """One transaction for all of ``requests``; a big batch is encoded part by part
        while the parts before are inserted."""
        if len(requests) <= _ROWS_PER_PART:
            rows = _rows(requests)
            await self._db.transaction(lambda conn: _insert(conn, rows), then=self._notifier.notify)
            return
        parts = (
            _rows(requests[start : start + _ROWS_PER_PART])
            for start in range(0, len(requests), _ROWS_PER_PART)
        )
        await self._db.transaction_in_parts(_insert, parts, then=self._notifier.notify)

    async def _publish_once(self, request: PublishRequest, key: str, sequence: int) -> bool:
        rows = _rows([request])

        def publish(conn: sqlite3.Connection) -> bool:
            if conn.execute(_ADVANCE_ONCE, (key, sequence)).rowcount == 0:
                return False
            _insert(conn, rows)
            return True

        return await self._db.transaction(publish, then=self._notifier.notify)

    # -- broadcasting ----------------------------------------------------------------------

    async def _broadcast(
        self, exchange: str, envelope: Envelope, routing_key: str, kind: ExchangeKind
    ) -> None:
        """A row read by every subscriber on the machine (see ``fanout.py``)."""
        await self._broadcaster.send(exchange, envelope, routing_key)

    def _subscribe(self, exchange: str, routing_key: str, kind: ExchangeKind) -> Subscription:
        return self._broadcaster.subscription(exchange, routing_key, kind, self.poll_interval)

    # -- consuming -------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], *, prefetch: int
    ) -> AsyncGenerator[Delivery, None]:
        check_consume(queues, prefetch)
        names = list(dict.fromkeys(queues))
        listener = await self._start_consuming()
        window = PrefetchWindow(prefetch)
        unsubscribe = listener.subscribe(window.signal.set)
        self._windows.open.add(window)
        buffered: deque[Delivery] = deque()

        async def claim(room: int) -> Claimed:
            try:
                return await self._claim(names, room)
            except BrokerError as exc:
                if not self._closed:
                    # The file is busy (a long batch holds its write lock) or failing: the
                    # consumer rides it out, as every transport does an outage.
                    log.warning(
                        "claiming from queue(s) %s failed, retrying in %g s: %s",
                        ",".join(names),
                        self.poll_interval,
                        exc,
                    )
                return [], None

        loop = claim_loop(
            self._windows, window, buffered, claim, self._idle_timeout, self._is_closed
        )
        try:
            async for delivery in loop:
                yield delivery
        finally:
            await loop.aclose()
            unsubscribe()
            self._windows.open.discard(window)
            await self._give_back(buffered)

    def _is_closed(self) -> bool:
        return self._closed

    async def _start_consuming(self) -> Listener:
        async with self._holding:
            if self._closed:
                raise BrokerError(f"the broker {self.url} is closed")
            if self._listener is None:
                self._holder = f"{_HOSTNAME}:{os.getpid()}:{secrets.token_hex(4)}"
                await self._db.transaction(self._register)
                listener = Listener(channel_directory(self.path, "tasks"))
                listener.open()
                self._listener = listener
                self._maintenance = self._tasks.spawn(self._maintain())
        await self._db.run(self._sweep)
        return self._listener

    def _register(self, conn: sqlite3.Connection) -> None:
        identity = process_identity(os.getpid())
        started = None if identity is None else identity[1]
        conn.execute(
            "INSERT OR REPLACE INTO celeriac_holders"
            " (holder, hostname, pid, pid_space, started, heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
            (self._holder, _HOSTNAME, os.getpid(), _PID_SPACE, started, now()),
        )

    def _idle_timeout(self, next_eta: float | None) -> float:
        if next_eta is None:
            return self.poll_interval
        return min(self.poll_interval, max(next_eta - now(), 0.0) + _EPSILON)

    async def _claim(self, queues: list[str], count: int) -> tuple[list[Delivery], float | None]:
        claim_sql = _CLAIM.format(marks=marks(len(queues)))
        next_eta_sql = _NEXT_ETA.format(marks=marks(len(queues)))

        def take(conn: sqlite3.Connection, at: float) -> tuple[int, list[Delivery]]:
            rows = conn.execute(claim_sql, (self._holder, *queues, at, count)).fetchall()
            return len(rows), self._deliveries(conn, rows)

        def claim(conn: sqlite3.Connection) -> tuple[list[Delivery], float | None]:
            at = now()
            while True:
                # One transaction with the burial of poison rows: if that fails, no row
                # stays held.
                taken, claimed = atomically(conn, partial(take, at=at))
                if not taken:
                    break
                if claimed:  # else every row taken was poison, buried by now: take again
                    claimed.sort(key=lambda d: (-d.priority, d.tag))
                    return claimed, None
            (next_eta,) = conn.execute(next_eta_sql, (*queues, at)).fetchone()
            return [], next_eta

        # Shielded: if the consumer is cancelled mid-claim, the rows the database already
        # gave it must go back rather than stay held by a live holder until close().
        job = self._tasks.spawn(self._db.run(claim))
        try:
            result: tuple[list[Delivery], float | None] = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._give_back_claim)
            raise
        return result

    def _deliveries(self, conn: sqlite3.Connection, rows: list[_Row]) -> list[Delivery]:
        """The claimed rows as deliveries; the rows that are not messages are moved to the
        dead letters (database thread, inside the claim's transaction)."""
        deliveries: list[Delivery] = []
        poison: list[tuple[int, str, str]] = []
        for row in rows:
            try:
                deliveries.append(_delivery(row))
            except Exception as exc:  # anything a hand-written row can throw: it is data
                poison.append((row[0], row[1], f"unreadable message row: {_describe(exc)}"))
        if poison:
            self._bury_poison(conn, poison)
        return deliveries

    def _bury_poison(self, conn: sqlite3.Connection, poison: list[tuple[int, str, str]]) -> None:
        at = now()
        for tag, queue, reason in poison:
            conn.execute(_BURY_POISON, (reason, at, tag, self._holder))
            conn.execute(
                "DELETE FROM celeriac_messages WHERE id = ? AND holder = ?", (tag, self._holder)
            )
            log.error(
                "moved message row %d of queue %s to the dead letters, raw bytes kept (%s):"
                " see them with `celeriac status`, and fix the program that wrote it",
                tag,
                queue,
                reason,
            )

    def _give_back_claim(self, job: asyncio.Task[tuple[list[Delivery], float | None]]) -> None:
        if job.cancelled() or job.exception() is not None or self._closed:
            return
        tags = [d.tag for d in job.result()[0]]
        if tags:
            self._tasks.spawn(self._release(tags, redelivered=False))

    async def _give_back(self, buffered: Iterable[Delivery]) -> None:
        tags = [d.tag for d in buffered if self._forget(d)]
        if tags and not self._closed:
            await self._release(tags, redelivered=False)

    async def _release(self, tags: list[int], *, redelivered: bool) -> None:
        def release(conn: sqlite3.Connection) -> None:
            released = conn.executemany(
                "UPDATE celeriac_messages SET holder = NULL, redelivered = redelivered OR ?"
                " WHERE id = ? AND holder = ?",
                [(redelivered, tag, self._holder) for tag in tags],
            )
            self._check_held(released.rowcount, len(tags), "given back")

        await self._db.transaction(release, then=self._notifier.notify)

    # -- holders ---------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Heartbeat and sweep while this broker holds messages, until close()."""
        interval = min(self.sweep_interval, self.visibility_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._db.run(self._heartbeat_and_sweep)
            except BrokerError as exc:
                log.warning("holder heartbeat or sweep failed, will retry: %s", exc)

    def _heartbeat_and_sweep(self, conn: sqlite3.Connection) -> None:
        beat = conn.execute(
            "UPDATE celeriac_holders SET heartbeat = ? WHERE holder = ?", (now(), self._holder)
        )
        if beat.rowcount == 0:
            log.warning(
                "holder %s was declared dead (no heartbeat for %g s): its messages were"
                " redelivered; registering again",
                self._holder,
                self.visibility_timeout,
            )
            atomically(conn, self._register)
        self._sweep(conn)

    def _sweep(self, conn: sqlite3.Connection) -> int:
        """Give back the messages of dead holders; returns how many. Database thread only."""
        deadline = now() - self.visibility_timeout
        rows = conn.execute(
            "SELECT holder, hostname, pid, pid_space, started, heartbeat FROM celeriac_holders"
        ).fetchall()
        dead = [(r[0], r[5]) for r in rows if r[0] != self._holder and _holder_dead(r, deadline)]
        if not dead and conn.execute(_HAS_ORPHANS).fetchone() is None:
            return 0
        released = atomically(conn, lambda c: _release_dead(c, dead))
        if released:
            log.info("redelivering %d message(s) of dead holders", released)
            self._notifier.notify()
        return released

    # -- settling --------------------------------------------------------------------------

    def _forget(self, delivery: Delivery) -> bool:
        """Close the delivery's slot in its window; False if this broker does not hold it."""
        return self._windows.settle(delivery.tag)

    async def ack(self, delivery: Delivery) -> None:
        """Acks are batched: those made while a batch is being written form the next one."""
        if self._forget(delivery):
            await self._acks.add(delivery.tag)

    def _delete(self, conn: sqlite3.Connection, tags: list[int]) -> None:
        deleted = 0
        for chunk in chunks(tags):
            deleted += conn.execute(
                f"DELETE FROM celeriac_messages WHERE holder = ? AND id IN ({marks(len(chunk))})",
                (self._holder, *chunk),
            ).rowcount
        self._check_held(deleted, len(tags), "acked")

    def _check_held(self, settled: int, expected: int, what: str) -> None:
        # Only when this holder was declared dead (no heartbeat for visibility_timeout):
        # the messages went back to their queues and may run twice (at least once).
        if settled < expected:
            log.warning(
                "%d message(s) %s by %s were no longer held by it: they were given to"
                " another consumer after its heartbeat stopped for over %g s",
                expected - settled,
                what,
                self._holder,
                self.visibility_timeout,
            )

    async def requeue(self, delivery: Delivery) -> None:
        if self._forget(delivery):
            await self._release([delivery.tag], redelivered=True)

    async def defer(self, delivery: Delivery, eta: float) -> None:
        if not self._forget(delivery):
            return

        def defer(conn: sqlite3.Connection) -> None:
            deferred = conn.execute(
                "UPDATE celeriac_messages SET holder = NULL, visible_at = ?"
                " WHERE id = ? AND holder = ?",
                (eta, delivery.tag, self._holder),
            )
            self._check_held(deferred.rowcount, 1, "deferred")

        await self._db.transaction(defer, then=self._notifier.notify)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not self._forget(delivery):
            return

        def bury(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "DELETE FROM celeriac_messages WHERE id = ? AND holder = ?"
                " RETURNING queue, envelope",
                (delivery.tag, self._holder),
            ).fetchone()
            self._check_held(0 if row is None else 1, 1, "dead-lettered")
            if row is not None:
                conn.execute(
                    "INSERT INTO celeriac_dead_letters (queue, envelope, reason, died_at)"
                    " VALUES (?, ?, ?, ?)",
                    (row[0], row[1], reason, now()),
                )

        await self._db.transaction(bury)

    # -- administration --------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            self._sweep(conn)  # messages of dead holders are waiting, not held
            deleted = conn.execute(
                "DELETE FROM celeriac_messages WHERE queue = ? AND holder IS NULL", (queue,)
            )
            return deleted.rowcount

        return await self._db.run(purge)

    async def queue_sizes(self, queues: Sequence[str] = ()) -> dict[str, int]:
        def sizes(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                f"SELECT {_fetchable('queue')}, COUNT(*) FROM celeriac_messages GROUP BY queue"
            )
            found: dict[str, int] = {}
            for queue, count in rows:
                name = _queue_name(queue)
                found[name] = found.get(name, 0) + count
            return found

        return await self._db.run(sizes)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        def letters(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT queue, CAST(envelope AS BLOB), reason, died_at FROM celeriac_dead_letters"
                " ORDER BY id DESC LIMIT ?",
                (max(limit, 0),),
            )
            return [DeadLetter(q, _letter_envelope(e), reason, at) for q, e, reason, at in rows]

        return await self._db.run(letters)

    async def dead_letter_count(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            (total,) = conn.execute("SELECT COUNT(*) FROM celeriac_dead_letters").fetchone()
            return int(total)

        return await self._db.run(count)


#: A claimed row as :data:`_CLAIM` returns it: any column but the first two may hold any
#: type when another program wrote the row.
_Row = tuple[int, str, Any, Any, Any, Any]


def _delivery(row: _Row) -> Delivery:
    """Raises on a row that is not a message (see :meth:`SQLiteBroker._deliveries`)."""
    tag, queue, priority, blob, redelivered, visible_at = row
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority {priority!r:.40} is not an integer {MIN_PRIORITY}-{MAX_PRIORITY}"
        )
    if not isinstance(visible_at, int | float):
        raise ValueError(f"visible_at {visible_at!r:.40} is not a number")
    if not isinstance(blob, bytes):
        found = "NULL" if blob is None else f"a {type(blob).__name__}"
        raise ValueError(f"its envelope is {found}, not a blob")
    return Delivery(decode_envelope(blob), queue, tag, bool(redelivered), priority)


def _queue_name(value: object) -> str:
    """A queue name as stored; a row written by another program may name its queue with
    bytes, or text that is not UTF-8 (no consumer takes it, but it is counted)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _describe(exc: Exception) -> str:
    """A poison row's reason: its error, kept to one short line."""
    return f"{type(exc).__name__}: {exc}"[:300]


def _letter_envelope(blob: bytes) -> Envelope:
    """A dead letter's envelope; one that does not decode (a poison row's) is shown as its
    raw bytes in the body, with empty headers, as the other transports show theirs."""
    try:
        return decode_envelope(blob)
    except Exception:
        return Envelope(bytes(blob), "", "")


def _rows(requests: Sequence[PublishRequest]) -> list[tuple[str, int, float, bytes]]:
    return [
        (r.queue, r.priority, r.eta if r.eta is not None else 0.0, encode_envelope(r.envelope))
        for r in requests
    ]


def _insert(conn: sqlite3.Connection, rows: list[tuple[str, int, float, bytes]]) -> None:
    conn.executemany(_INSERT, rows)


def _release_dead(conn: sqlite3.Connection, dead: list[tuple[str, float]]) -> int:
    """Inside one transaction: drop each dead holder (unless it beat since we looked)."""
    released = 0
    for holder, heartbeat in dead:
        gone = conn.execute(
            "DELETE FROM celeriac_holders WHERE holder = ? AND heartbeat = ?", (holder, heartbeat)
        )
        if gone.rowcount:
            released += conn.execute(
                "UPDATE celeriac_messages SET holder = NULL, redelivered = 1 WHERE holder = ?",
                (holder,),
            ).rowcount
    return released + conn.execute(_RELEASE_ORPHANS).rowcount
