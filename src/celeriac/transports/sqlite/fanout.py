"""Broadcasts on SQLite: rows kept a few seconds, read by every subscriber on the machine.

A broadcast is one row of ``celeriac_broadcasts`` (exchange, routing key, envelope),
followed by a wake-up on the ``broadcasts`` channel of ``wakeup.py``. A subscriber notes the
last row id when it starts (``sqlite_sequence``: ids are AUTOINCREMENT, never reused, so
pruning cannot bring an old id back) and, on every wake-up or safety poll, reads the rows
of its exchange after the last one it saw. Rows older than :data:`RETENTION` seconds are
deleted by the broadcasts that follow: a subscriber that has not read them by then has
lost them, which a fire-and-forget broadcast allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from functools import partial

from celeriac.errors import BrokerError
from celeriac.protocol.envelope import Envelope
from celeriac.transports.broker import ExchangeKind, Subscription, now, wait_for_signal
from celeriac.transports.sqlite.database import Database, decode_envelope, encode_envelope
from celeriac.transports.sqlite.wakeup import Listener, Notifier, channel_directory

log = logging.getLogger(__name__)

#: Seconds a broadcast row is kept for subscribers still to read it.
RETENTION = 10.0
#: Seconds between two prunings by one sender: the DELETE need not run on every row.
_PRUNE_EVERY = 1.0
_ROWS_PER_READ = 500
_INSERT = (
    "INSERT INTO celeriac_broadcasts (exchange, routing_key, sent_at, envelope) VALUES (?, ?, ?, ?)"
)
_PRUNE = "DELETE FROM celeriac_broadcasts WHERE sent_at < ?"
_LAST_ID = "SELECT seq FROM sqlite_sequence WHERE name = 'celeriac_broadcasts'"
_AFTER = (
    "SELECT id, routing_key, envelope FROM celeriac_broadcasts"
    " WHERE id > ? AND exchange = ? ORDER BY id LIMIT ?"
)
CHANNEL = "broadcasts"


class Broadcaster:
    """The sending side of one broker: inserts, prunes, wakes the subscribers."""

    def __init__(self, db: Database, path: str) -> None:
        self._db = db
        self._path = path
        self._notifier = Notifier(channel_directory(path, CHANNEL))  # database thread only
        self._pruned_at = 0.0

    async def send(self, exchange: str, envelope: Envelope, routing_key: str) -> None:
        row = (exchange, routing_key, now(), encode_envelope(envelope))
        prune = row[2] - self._pruned_at > _PRUNE_EVERY
        if prune:
            self._pruned_at = row[2]

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT, row)
            if prune:
                conn.execute(_PRUNE, (row[2] - RETENTION,))

        await self._db.transaction(insert, then=self._notifier.notify)

    def subscription(
        self, exchange: str, routing_key: str, kind: ExchangeKind, poll_interval: float
    ) -> Subscription:
        return SQLiteSubscription(self._db, self._path, exchange, routing_key, kind, poll_interval)

    def close(self) -> None:
        self._notifier.close()


class SQLiteSubscription(Subscription):
    """Reads the rows of its exchange after the last it saw, when woken."""

    def __init__(
        self,
        db: Database,
        path: str,
        exchange: str,
        routing_key: str,
        kind: ExchangeKind,
        poll_interval: float,
    ) -> None:
        super().__init__(exchange, routing_key, kind)
        self._db = db
        self._path = path
        self._poll_interval = poll_interval
        self._listener: Listener | None = None
        self._reader: asyncio.Task[None] | None = None
        self._signal = asyncio.Event()

    async def _open(self) -> None:
        # Listening first: a broadcast committed after the last id is read wakes the reader.
        self._listener = Listener(channel_directory(self._path, CHANNEL))
        self._listener.open()
        self._listener.subscribe(self._signal.set)
        last = await self._db.run(_last_id)
        self._reader = asyncio.get_running_loop().create_task(self._read(last))

    async def _read(self, last: int) -> None:
        while True:
            self._signal.clear()
            try:
                rows = await self._db.run(partial(_rows_after, last, self.exchange))
            except BrokerError as exc:
                log.warning("reading broadcasts on %r failed, retrying: %s", self.exchange, exc)
                rows = []
            for row_id, routing_key, blob in rows:
                last = row_id
                try:
                    envelope = decode_envelope(blob)
                except (ValueError, TypeError) as exc:
                    log.warning("skipping broadcast row %d on %r: %s", row_id, self.exchange, exc)
                    continue
                self.deliver(envelope, str(routing_key))
            if len(rows) < _ROWS_PER_READ:
                await wait_for_signal(self._signal, self._poll_interval)

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._listener is not None:
            self._listener.close()


def _last_id(conn: sqlite3.Connection) -> int:
    row = conn.execute(_LAST_ID).fetchone()
    return int(row[0]) if row else 0


def _rows_after(last: int, exchange: str, conn: sqlite3.Connection) -> list[tuple[int, str, bytes]]:
    return conn.execute(_AFTER, (last, exchange, _ROWS_PER_READ)).fetchall()
