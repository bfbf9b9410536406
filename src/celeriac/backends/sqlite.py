"""``sqlite:///path`` results: one table in the same kind of file as the SQLite broker.

Records live in ``celeriac_results`` (see :mod:`celeriac._sqlite`); the file may be the
broker's own. Storing a ready record notifies the ``results`` wake-up channel after the
commit. Waiting never polls per waiter: one watcher task per backend instance re-reads, on
each wake-up, only the ids its waiters wait for, in one query for all of them; a new waiter
is checked at once, and a slow safety poll covers a lost wake-up.

Expired records are invisible at once, deleted when read, and swept out on connect and
every ``cleanup_every`` stores.
"""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial
from itertools import chain
from typing import Any

from celeriac import errors
from celeriac._sqlite import Database, WriteBatch, chunks, marks, path_from_url
from celeriac._wakeup import Listener, Notifier, channel_directory, wait_for_signal
from celeriac.backends.base import ResultBackend
from celeriac.brokers.base import now

_Row = tuple[str, bytes, bool, float | None]

_UPSERT = """
INSERT INTO celeriac_results (task_id, data, ready, expires_at) VALUES {rows}
ON CONFLICT (task_id) DO UPDATE
SET data = excluded.data, ready = excluded.ready, expires_at = excluded.expires_at
"""
_CLEANUP = "DELETE FROM celeriac_results WHERE expires_at IS NOT NULL AND expires_at <= ?"


class SQLiteBackend(ResultBackend):
    """Results in a SQLite file shared by every process on the machine.

    Options: ``poll_interval`` (1.0 s: safety re-check when no wake-up came),
    ``cleanup_every`` (100: stores between sweeps of expired records), ``busy_timeout``
    (10.0 s to wait for another process's write lock).
    """

    schemes = ("sqlite",)

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.path = path_from_url(url)
        self.poll_interval = float(self.options.get("poll_interval", 1.0))
        self.cleanup_every = int(self.options.get("cleanup_every", 100))
        self._db = Database(self.path, busy_timeout=float(self.options.get("busy_timeout", 10.0)))
        self._notifier = Notifier(channel_directory(self.path, "results"))  # database thread only
        self._listener: Listener | None = None
        self._waiters: dict[str, list[asyncio.Future[bytes]]] = {}
        self._fresh: set[str] = set()  # ids whose waiters have not been checked yet
        self._notified = False  # a wake-up came: every waited id may be ready
        self._signal = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._stores = 0  # since the last sweep of expired records; database thread only
        self._writes: WriteBatch[_Row] = WriteBatch(self._db, self._write, then=self._written)
        self._closed = False

    async def connect(self) -> None:
        await self._db.open()
        await self._db.run(_cleanup)

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
        await self._writes.add((task_id, data, ready, expires_at))

    def _write(self, conn: sqlite3.Connection, rows: list[_Row]) -> None:
        # One statement per chunk; rows for the same id apply in order, the last one wins.
        for chunk in chunks(rows):
            conn.execute(_UPSERT.format(rows=marks(len(chunk), 4)), list(chain(*chunk)))
        self._stores += len(rows)
        if self.cleanup_every > 0 and self._stores >= self.cleanup_every:
            self._stores = 0
            _cleanup(conn)

    def _written(self, rows: list[_Row]) -> None:
        if any(ready for _, _, ready, _ in rows):
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
        await self._db.run(
            partial(_execute, "DELETE FROM celeriac_results WHERE task_id = ?", (task_id,))
        )

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
            raise errors.TimeoutError(f"task {task_id} was not ready after {timeout} s") from exc
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
            for task_id in ids:
                for future in self._waiters.pop(task_id, []):
                    if not future.done():
                        future.set_exception(exc)
            return
        for task_id, data in found.items():
            for future in self._waiters.pop(task_id, []):
                if not future.done():
                    future.set_result(data)


def _cleanup(conn: sqlite3.Connection) -> None:
    conn.execute(_CLEANUP, (now(),))


def _execute(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> None:
    conn.execute(sql, params)


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
