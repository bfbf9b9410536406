"""``redis://`` results, in Celery's format, so Celery clients and workers read them too.

A record is the key ``celery-task-meta-<id>`` (SETEX with ``result_expires``), and every
store is also PUBLISHed on a channel of the same name, as Celery's backend does; PENDING is
"no key". Waiting uses one pub/sub connection per backend, shared by every waiter, so
thousands of concurrent ``await r.get()`` cost one connection. A waiter subscribes and
GETs the key at once (a result stored already needs no more), and GETs it again once the
subscription is confirmed, which closes the race with a result stored in between; after a
reconnect every channel is confirmed (and checked) again, so a result published while the
connection was down is not missed.

Storing rides an outage out (the write is sent again until Redis answers); what Redis refuses
fails that store alone with :class:`~celeriac.errors.ResultRejected` and delays no other: an
error reply (``OOM``, ``WRONGTYPE``) to one record of a pipelined batch, or a record longer
than the server's ``proto-max-bulk-len`` (Redis would drop the connection on it, which looks
like an outage and was retried forever: such a record is checked before it is sent).

When the broker is a :class:`RedisBroker` on the same database, reached the same way and
with the same client options, the store borrows the broker's client rather than opening a
second connection to the same server (:meth:`RedisBackend.share_connection`). Why: with no
``result_backend`` set, results go to the broker's database, and a second multiplexed
connection per process there would do nothing the first cannot (the store's writes join the
broker's batches); a server with many workers and a ``maxclients`` limit counts each one.
Speed is not the reason: on the no-op drain (``bench/drain.py --broker redis``, 2026-12-03,
commit ddb2332) one client or two differ less than one run from the next. Only the client
is shared: key prefixes, outage backoff and the pub/sub listener stay the store's own. The
broker owns a borrowed client: the store's ``close`` waits for its writes and fails its
waiters but leaves the client open, for the broker (closed after it) to close.

Counters are plain integer keys under ``global_keyprefix`` (INCRBY and PEXPIRE in one
MULTI), named by the caller, so Celery's own counter keys can be used; the same keys are
raised by ``lua/counter_advance.lua`` and started by ``lua/counter_init.lua`` (a GET and a SET
in one atomic step each). Leases are keys ``celeriac-lease-<name>`` taken and renewed by
``lua/lease_acquire.lua`` (SET NX PX, or a PEXPIRE by the same holder, in one atomic step) and
released by ``lua/lease_release.lua``. Both expire by Redis's clock.

A collection of documents is one hash, ``celeriac-documents-<collection>`` (HSET, HGETALL,
HDEL: one command each), kept until deleted. A rate limit is two keys, both expiring once it
is idle: ``celeriac-rate-starts-<key>``, a sorted set of start times in microseconds (each
start a member of its own, made by the caller, so equal times count twice), and
``celeriac-rate-retry-<key>``, the next retry time to hand out; ``lua/rate_acquire.lua``
reads Redis's ``TIME`` and decides, records and spaces in one atomic step.

Groups and chords are Celery 5.7's keys, so Celery 5.7 and 5.6 workers and clients can take
part in the same chord. ``save_group`` writes ``celery-taskset-meta-<id>`` (SETEX and PUBLISH,
as Celery's ``GroupResult.save()``). A chord's join lives beside it, under the same name
with a suffix: ``.s`` the header's size (:meth:`~RedisBackend.chord_start`: ``DEL .c``, then
``SET .s <size> EX <expires>``), ``.j`` a sorted set of ``[1, task_id, state, value]``
scored by the group index (+inf without one), ``.t`` the size's diff (added parts), ``.d``
the parts recorded (``"<task id>:<score>"``), ``.c`` the claim. ``lua/chord_part.lua``
records a part and claims the chord when ``.j`` counts ``.s + .t`` parts (``SET .c <token>
NX EX 6``); the claimer reads ``.j`` (ZRANGE), holds the claim for the body's publish
(``lua/chord_extend.lua``, 21 s) and, in :meth:`~RedisBackend.chord_done`, drops the join
and sets ``.c`` to ``"done"`` for 300 s (``lua/chord_done.lua``). The numbers are Celery's
defaults, as captured. Only a part checks for completion: the producer calls
``chord_start`` before it publishes the last header task, so the last part finds the size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from celeriac import errors
from celeriac.protocol.serialization import json_text
from celeriac.transports.backend import (
    SHORT_WAIT,
    Changes,
    ChordPart,
    EventLog,
    KeyValueBackend,
    Log,
    Meta,
    decode,
    decode_part,
    is_ready,
    part_member,
)
from celeriac.transports.background import Background
from celeriac.transports.broker import Broker
from celeriac.transports.options import Option
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.client import (
    Arg,
    Client,
    Connection,
    Pipeline,
    Reply,
    ReplyError,
    Script,
)
from celeriac.transports.redis.connection import (
    UNREACHABLE,
    Coalescer,
    Outage,
    check_options,
    client_from_url,
    client_settings,
    refusal,
    same_client,
    until_done,
)
from celeriac.transports.urls import redacted

log = logging.getLogger(__name__)

KEY_PREFIX = "celery-task-meta-"
EVENTS_PREFIX = "celeriac-task-events-"
LEASE_PREFIX = "celeriac-lease-"
DOCUMENTS_PREFIX = "celeriac-documents-"
#: A rate limit's start times and its next retry time (neither name a prefix of the other's).
RATE_STARTS_PREFIX = "celeriac-rate-starts-"
RATE_RETRY_PREFIX = "celeriac-rate-retry-"
#: The sorted set of revoked task ids, scored by when each revoke ends.
REVOKED_KEY = "celeriac-revoked"
GROUP_PREFIX = "celery-taskset-meta-"
#: Celery's defaults: the claim of the caller that completed a chord holds for twice the
#: join timeout (5 s, at least 5 s); once the parts are read, for the body's publish with
#: its retries (3 retries, 4 s connection timeout: 21 s); ``"done"`` stays for 300 s.
CHORD_CLAIM_SECONDS = 6
CHORD_PUBLISH_SECONDS = 21
CHORD_DONE_SECONDS = 300
_OPTIONS = {"global_keyprefix": Option(str, "")}
_CLOSE_TIMEOUT = 2.0
#: Redis's smallest ``proto-max-bulk-len``: a shorter record needs no check of the server's.
_SMALLEST_BULK_LIMIT = 1024 * 1024
#: Redis's default ``proto-max-bulk-len``, assumed where ``CONFIG GET`` is not allowed.
_DEFAULT_BULK_LIMIT = 512 * 1024 * 1024
#: Error replies that mean "not now" rather than "never" (a replica being promoted, a busy
#: script): the store is tried again later.
_TRANSIENT_REPLIES = ("READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")
#: Unsubscribing waits this long (or for this many channels) to go in one command.
_RETIRE_AFTER = 0.25
_RETIRE_BATCH = 200
#: What the client raises; a read raises celeriac's errors instead (``RedisBackend.failed``).
_DRIVER_ERRORS: tuple[type[Exception], ...] = (ReplyError, *UNREACHABLE)


class _Record:
    """One store in a pipelined batch: key, JSON, seconds to keep, the event log to append
    it to (None: not an event), and the error reply Redis gave it, if any."""

    __slots__ = ("data", "events", "expires", "key", "refused")

    def __init__(self, key: str, data: bytes, expires: float | None, events: str | None) -> None:
        self.key = key
        self.data = data
        self.expires = expires
        self.events = events
        self.refused: ReplyError | None = None


class Watcher(Protocol):
    """Someone waiting on a task's records: told each record seen, or the error that ends
    the wait."""

    def record(self, data: bytes) -> None: ...

    def subscribed(self) -> None:
        """The channel is subscribed and its key was read: nothing later can be missed."""

    def fail(self, error: BaseException) -> None: ...


class _ReadyWaiter:
    """Resolves its future with the first record in a ready state."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def record(self, data: bytes) -> None:
        if not self.future.done() and is_ready(data):
            self.future.set_result(data)

    def subscribed(self) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _script(name: str) -> Script:
    return Script((Path(__file__).parent / "lua" / name).read_text())


class RedisBackend(KeyValueBackend):
    """Celery's Redis result format on one Redis database.

    Options (``result_backend_transport_options``): ``global_keyprefix`` (prepended to
    every key and channel, as Celery does) and the client options ``socket_timeout``,
    ``socket_connect_timeout`` and ``health_check_interval``; with the broker's URL and
    client options, the store uses the broker's client (see the module doc).
    """

    def __init__(
        self, url: str, *, options: dict[str, Any] | None = None, broker_url: str | None = None
    ) -> None:
        super().__init__(url, options=options, broker_url=broker_url)
        opts = check_options(self.options, _OPTIONS, "result_backend_transport_options")
        self._client_options = opts
        prefix = _celery_prefix(str(opts["global_keyprefix"]))
        self.prefix = prefix
        self.key_prefix = prefix + KEY_PREFIX
        self.events_prefix = prefix + EVENTS_PREFIX
        self._lease_scripts: tuple[Script, Script] | None = None  # acquire, release
        self._chord_scripts: tuple[Script, Script, Script] | None = None  # part, extend, done
        self._scripts: dict[str, Script] = {}  # the others, by file name, read on first use
        self._claims: dict[str, str] = {}  # group id -> the token of a chord this one claimed
        self._client: Client | None = None
        #: The broker whose client ``connect`` borrows (``share_connection``), if any.
        self._lender: RedisBroker | None = None
        self._borrowed = False  # the client is the lender's: close() leaves it open
        self._listener: _Listener | None = None
        self._outage = Outage(url, "result backend")
        self._stores: Coalescer[_Record] = Coalescer(self._write)
        self._closed = False

    @property
    def client(self) -> Client:
        if self._client is None:
            raise errors.BrokerError(f"the result backend {redacted(self.url)} is not connected")
        return self._client

    def key(self, task_id: str) -> str:
        return self.key_prefix + task_id

    def failed(self, exc: BaseException, doing: str) -> BaseException:
        """What a caller gets for the client's error ``exc``: BackendUnreachable when Redis
        is out of reach (try again later), a BrokerError for an error reply (waiting will not
        help; the message says what will), with ``exc`` as its cause; anything else as it is.
        """
        if isinstance(exc, UNREACHABLE):
            error: errors.BrokerError = errors.BackendUnreachable(
                f"cannot {doing}: Redis at {redacted(self.url)} is unreachable"
                f" ({type(exc).__name__}: {exc}); check that it runs and that result_backend"
                " points at it"
            )
        elif isinstance(exc, ReplyError):
            error = errors.BrokerError(refusal(self.url, exc, f"to {doing}", "result_backend"))
        else:
            return exc
        error.__cause__ = exc
        return error

    def share_connection(self, broker: Broker) -> None:
        """Borrow ``broker``'s client in :meth:`connect` when it is a Redis broker on the
        same database, reached the same way, with the same client options (see
        :func:`~celeriac.transports.redis.connection.same_client`); otherwise keep a client
        of the store's own. Decided here, since the broker makes its client only in its own
        ``connect``, which runs before the store's."""
        if isinstance(broker, RedisBroker) and same_client(
            self.url, client_settings(self._client_options), broker.url, broker.client_settings
        ):
            self._lender = broker

    async def connect(self) -> None:
        lender = self._lender
        if lender is not None:
            try:
                self._client = lender.client
            except errors.BrokerError:  # the broker was not connected: open our own
                pass
            else:
                self._borrowed = True
                return
        self._client = client_from_url(self.url, self._client_options)

    async def close(self) -> None:
        """Wait for the stores in flight, fail every waiter, drop the subscription
        connection, and close the client unless it is borrowed (its broker closes it)."""
        if self._closed:
            return
        self._closed = True
        await self._stores.close()
        if self._listener is not None:
            await self._listener.close(
                errors.BrokerError(f"the result backend {redacted(self.url)} was closed")
            )
        if self._client is not None and not self._borrowed:
            await self._client.aclose()

    async def _set(self, task_id: str, data: bytes, ready: bool, expires: float | None) -> None:
        """Stores are pipelined like acks, in the order they were made (same id: last wins)."""
        await self._store(task_id, _Record(self.key(task_id), data, expires, None))

    async def _append(self, task_id: str, data: bytes, expires: float | None) -> None:
        # Through the same ordered batches as records: an event never lands after the final
        # record of its task.
        record = _Record(self.key(task_id), data, expires, self.events_prefix + task_id)
        await self._store(task_id, record)

    async def _store(self, task_id: str, record: _Record) -> None:
        if len(record.data) > _SMALLEST_BULK_LIMIT:
            await self._check_bulk_limit(task_id, record.data)
        try:
            await self._stores.add(record)
        except UNREACHABLE as exc:  # only once the backend is closing
            raise errors.BackendUnreachable(
                f"the result backend {redacted(self.url)} closed before Redis came back"
                f" ({type(exc).__name__}: {exc})"
            ) from exc
        refused = record.refused
        if refused is None:
            return
        text = str(refused)
        if text.startswith(_TRANSIENT_REPLIES):
            raise errors.BackendUnreachable(
                f"Redis at {redacted(self.url)} cannot store the result of task {task_id} now:"
                f" {text}"
            )
        raise errors.ResultRejected(
            f"Redis at {redacted(self.url)} refused the result of task {task_id}"
            f" ({len(record.data)} bytes): {text}"
        )

    async def _check_bulk_limit(self, task_id: str, data: bytes) -> None:
        """Refuse a record longer than the server's ``proto-max-bulk-len`` before sending
        it: Redis answers one with a protocol error and drops the connection, which the
        write would take for an outage and send again forever, every later store behind it.
        The setting is read each time (it can change, and such records are rare and slow)."""
        try:
            reply = await self.client.execute("CONFIG", "GET", "proto-max-bulk-len")
        except ReplyError:  # CONFIG renamed or not allowed (a managed Redis): its default
            limit = _DEFAULT_BULK_LIMIT
        except UNREACHABLE as exc:
            raise errors.BackendUnreachable(
                f"Redis at {redacted(self.url)} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        else:
            limit = int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else 0
            limit = limit or _DEFAULT_BULK_LIMIT
        if len(data) > limit:
            raise errors.ResultRejected(
                f"Redis at {redacted(self.url)} refuses the result of task {task_id}: it is"
                f" {len(data)} bytes, over the server's proto-max-bulk-len of {limit} bytes;"
                " return large data by reference (a path or URL), or lower result_max_size"
                " under that limit"
            )

    async def _write(self, records: list[_Record]) -> None:
        commands: list[list[Any]] = []
        spans: list[tuple[_Record, int, int]] = []
        for record in records:
            start = len(commands)
            key, data, expires = record.key, record.data, record.expires
            if record.events is not None:  # before the record: a reader that sees it sees this
                commands.append(["RPUSH", record.events, data])
                if expires is not None:
                    commands.append(["PEXPIRE", record.events, max(1, round(expires * 1000))])
            commands.append(_set_command(key, data, expires))
            commands.append(["PUBLISH", key, data])
            spans.append((record, start, len(commands)))

        async def write() -> list[Reply | Exception]:
            connection = await self.client.shared()
            return await connection.execute_many(commands)

        # A worker must not drop a result because Redis restarted: ride the outage out.
        # An error reply belongs to its record alone (the others in the batch are stored).
        replies = await until_done(write, self._outage, give_up=lambda: self._closed)
        if any(isinstance(reply, ReplyError) for reply in replies):  # rare: match them up
            for record, start, end in spans:
                record.refused = next(
                    (r for r in replies[start:end] if isinstance(r, ReplyError)), None
                )

    async def _get(self, task_id: str) -> bytes | None:
        try:
            data: bytes | None = await self.client.execute("GET", self.key(task_id))
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"read the result of task {task_id}") from exc
        return data

    async def _delete(self, task_id: str) -> None:
        try:
            await self.client.execute("DEL", self.key(task_id), self.events_prefix + task_id)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"forget the result of task {task_id}") from exc

    async def _events_since(self, task_id: str, after: int | None) -> EventLog:
        events = self.events_prefix + task_id
        pipe = self.client.pipeline()
        pipe.add("MULTI")
        pipe.add("LRANGE", events, -1 if after is None else after, -1)
        pipe.add("LLEN", events)
        pipe.add("GET", self.key(task_id))
        pipe.add("EXEC")
        try:
            listed, count, record = (await pipe.execute())[-1]
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"read the events of task {task_id}") from exc
        return Log(list(listed), int(count), record)

    @asynccontextmanager
    async def _watch_task(self, task_id: str) -> AsyncIterator[Changes]:
        if self._closed:
            raise errors.BrokerError(f"the result backend {redacted(self.url)} is closed")
        if self._listener is None:
            self._listener = _Listener(self)
        watcher = _StreamWatcher()
        key = self.key(task_id).encode()
        self._listener.watch(key, watcher)
        try:
            await watcher.ready()
            yield watcher
        finally:
            self._listener.unwatch(key, watcher)

    async def _wait(self, task_id: str, timeout: float | None) -> bytes:
        if self._closed:
            raise errors.BrokerError(f"the result backend {redacted(self.url)} is closed")
        if self._listener is None:
            self._listener = _Listener(self)
        waiter = _ReadyWaiter(asyncio.get_running_loop().create_future())
        key = self.key(task_id).encode()
        self._listener.watch(key, waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except TimeoutError as exc:
            raise self.not_ready(task_id, timeout) from exc
        finally:
            self._listener.unwatch(key, waiter)

    # -- counters and leases ---------------------------------------------------------------

    async def _incr(self, key: str, by: int, expires: float | None) -> int:
        pipe = self.client.pipeline()
        pipe.add("MULTI")
        pipe.add("INCRBY", self.prefix + key, by)
        if expires is not None:
            pipe.add("PEXPIRE", self.prefix + key, _milliseconds(expires))
        pipe.add("EXEC")
        try:
            replies = (await pipe.execute())[-1]
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"count {key}") from exc
        if isinstance(replies[0], ReplyError):  # not an integer there (a wrong key name)
            raise self.failed(replies[0], f"count {key}") from replies[0]
        return int(replies[0])

    async def _get_counter(self, key: str) -> int:
        try:
            value = await self.client.execute("GET", self.prefix + key)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"read the counter {key}") from exc
        return 0 if value is None else int(value)

    async def _delete_counter(self, key: str) -> None:
        try:
            await self.client.execute("DEL", self.prefix + key)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"delete the counter {key}") from exc

    async def _acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        acquire, _ = self._leases()
        key = self.prefix + LEASE_PREFIX + name
        try:
            taken = await self.client.run_script(acquire, [key], [holder, _milliseconds(ttl)])
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"acquire the lease {name}") from exc
        return bool(taken == 1)

    async def _release_lease(self, name: str, holder: str) -> None:
        _, release = self._leases()
        key = self.prefix + LEASE_PREFIX + name
        try:
            await self.client.run_script(release, [key], [holder])
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"release the lease {name}") from exc

    async def _advance_counter(self, key: str, to: int, expires: float | None) -> int:
        keep: Arg = "" if expires is None else _milliseconds(expires)
        before = await self._run_script(
            "counter_advance.lua", [self.prefix + key], [to, keep], f"advance the counter {key}"
        )
        return int(before)

    async def _init_counter(self, key: str, value: int, expires: float | None) -> int:
        keep: Arg = "" if expires is None else _milliseconds(expires)
        value_now = await self._run_script(
            "counter_init.lua", [self.prefix + key], [value, keep], f"start the counter {key}"
        )
        return int(value_now)

    # -- documents -------------------------------------------------------------------------

    def documents_key(self, collection: str) -> str:
        """The hash that holds a collection's documents."""
        return self.prefix + DOCUMENTS_PREFIX + collection

    async def _put_document(self, collection: str, name: str, data: bytes) -> None:
        try:
            await self.client.execute("HSET", self.documents_key(collection), name, data)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"store the document {name} of {collection}") from exc

    async def _documents(self, collection: str) -> dict[str, bytes]:
        try:
            reply = await self.client.execute("HGETALL", self.documents_key(collection))
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"read the documents of {collection}") from exc
        return {
            bytes(name).decode("utf-8", "replace"): bytes(data)
            for name, data in zip(reply[::2], reply[1::2], strict=True)
        }

    async def _delete_document(self, collection: str, name: str) -> bool:
        try:
            deleted = await self.client.execute("HDEL", self.documents_key(collection), name)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"delete the document {name} of {collection}") from exc
        return bool(deleted)

    # -- rate limits -----------------------------------------------------------------------

    async def _acquire_rate(self, key: str, limit: int, period: float, burst: int) -> float:
        keys = [self.prefix + RATE_STARTS_PREFIX + key, self.prefix + RATE_RETRY_PREFIX + key]
        args: list[Arg] = [
            limit,
            repr(period * 1_000_000),
            burst,
            uuid.uuid4().hex,
            repr(SHORT_WAIT * 1_000_000),
        ]
        waited = await self._run_script(
            "rate_acquire.lua", keys, args, f"acquire the rate limit {key}"
        )
        return int(waited) / 1_000_000

    async def _run_script(
        self, name: str, keys: Sequence[Arg], args: Sequence[Arg], doing: str
    ) -> Reply:
        """Run the script ``lua/<name>`` (read on first use); the client's errors as
        celeriac's (:meth:`failed`)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = _script(name)
        try:
            return await self.client.run_script(script, keys, args)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, doing) from exc

    # -- revocations -----------------------------------------------------------------------

    async def _add_revoked(self, task_ids: list[str], until: float) -> None:
        # One sorted set scored by when each revoke ends; GT keeps the later end.
        key = self.prefix + REVOKED_KEY
        pipe = self.client.pipeline()
        for first in range(0, len(task_ids), 1000):
            chunk = task_ids[first : first + 1000]
            pipe.add("ZADD", key, "GT", *[arg for i in chunk for arg in (repr(until), i)])
        pipe.add("ZREMRANGEBYSCORE", key, "-inf", repr(time.time()))
        try:
            replies = await pipe.execute()
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, "record revoked tasks") from exc
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise self.failed(reply, "record revoked tasks") from reply

    async def _revoked(self) -> dict[str, float]:
        key = self.prefix + REVOKED_KEY
        try:
            reply = await self.client.execute(
                "ZRANGE", key, repr(time.time()), "+inf", "BYSCORE", "WITHSCORES"
            )
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, "read the revoked tasks") from exc
        return {
            bytes(reply[i]).decode("utf-8", "replace"): float(reply[i + 1])
            for i in range(0, len(reply), 2)
        }

    def _leases(self) -> tuple[Script, Script]:
        """The lease scripts, read on first use (most backends never take a lease)."""
        if self._lease_scripts is None:
            self._lease_scripts = (_script("lease_acquire.lua"), _script("lease_release.lua"))
        return self._lease_scripts

    # -- groups and chords -----------------------------------------------------------------

    joins_chords = True

    def group_key(self, group_id: str, suffix: str = "") -> str:
        """Celery's key of a group's record (``suffix`` ``""``) or of its chord join."""
        return f"{self.prefix}{GROUP_PREFIX}{group_id}{suffix}"

    async def save_group(self, group_id: str, meta: Meta, *, expires: float | None) -> None:
        key, data = self.group_key(group_id), json_text(meta).encode()
        pipe = self.client.pipeline()
        pipe.add(*_set_command(key, data, expires))
        pipe.add("PUBLISH", key, data)  # as Celery's backend publishes every record it sets
        await self._run(pipe, f"save the group {group_id}")

    async def restore_group(self, group_id: str) -> Meta | None:
        try:
            data = await self.client.execute("GET", self.group_key(group_id))
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"restore the group {group_id}") from exc
        return None if data is None else decode(data)

    async def forget_group(self, group_id: str) -> None:
        try:
            await self.client.execute("DEL", self.group_key(group_id))
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"forget the group {group_id}") from exc

    async def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        pipe = self.client.pipeline()
        # A chord started again (a frozen one applied twice) runs anew: no claim, no "done".
        pipe.add("DEL", self.group_key(group_id, ".c"))
        keep: list[Arg] = []  # Celery's SET ... EX; PX for a fraction of a second
        if expires is not None:
            whole = expires == int(expires) and expires >= 1
            keep = ["EX", int(expires)] if whole else ["PX", _milliseconds(expires)]
        pipe.add("SET", self.group_key(group_id, ".s"), int(size), *keep)
        await self._run(pipe, f"start the chord {group_id}")

    async def chord_part(
        self, group_id: str, part: ChordPart, *, expires: float | None
    ) -> list[ChordPart] | None:
        record, extend, _ = self._chords()
        score = "+inf" if part.index is None else str(int(part.index))
        token = uuid.uuid4().hex
        claim, size = self.group_key(group_id, ".c"), self.group_key(group_id, ".s")
        joined = self.group_key(group_id, ".j")
        keys = [joined, self.group_key(group_id, ".t"), size, self.group_key(group_id, ".d")]
        keys += [self.group_key(group_id), claim]
        seconds = _seconds(expires)
        args: list[Arg] = [part.task_id, part_member(part), 1, score, seconds, seconds]
        args += [CHORD_CLAIM_SECONDS, token]
        try:
            _, claimed = await self.client.run_script(record, keys, args)
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"record a part of the chord {group_id}") from exc
        if claimed != 1:
            return None
        pipe = self.client.pipeline()
        pipe.add("ZRANGE", joined, 0, -1, "WITHSCORES")
        pipe.run_script(extend, [claim, size], [token, CHORD_PUBLISH_SECONDS])
        listed, held = await self._run(pipe, f"read the parts of the chord {group_id}")
        if held != 1:  # lost meanwhile: the claim lapsed and another caller took it
            log.warning("chord %s: its claim was lost before its parts were read", group_id)
            return None
        self._claims[group_id] = token
        return [
            decode_part(member, _index(score))
            for member, score in zip(listed[::2], listed[1::2], strict=True)
        ]

    async def chord_done(self, group_id: str) -> None:
        """Drop the join and mark the chord over, if this instance's :meth:`chord_part`
        holds its claim still (else another caller took it over and drops it itself)."""
        token = self._claims.pop(group_id, None)
        if token is None:
            return
        _, _, done = self._chords()
        keys = [self.group_key(group_id, suffix) for suffix in (".c", ".j", ".t", ".s", ".d")]
        try:
            dropped = await self.client.run_script(done, keys, [token, CHORD_DONE_SECONDS])
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, f"end the chord {group_id}") from exc
        if dropped != 1:
            log.warning("chord %s: its claim was lost before its join was dropped", group_id)

    def _chords(self) -> tuple[Script, Script, Script]:
        """The chord scripts, read on first use."""
        if self._chord_scripts is None:
            names = ("chord_part.lua", "chord_extend.lua", "chord_done.lua")
            self._chord_scripts = (_script(names[0]), _script(names[1]), _script(names[2]))
        return self._chord_scripts

    async def _run(self, pipe: Pipeline, doing: str) -> list[Reply]:
        try:
            return await pipe.execute()
        except _DRIVER_ERRORS as exc:
            raise self.failed(exc, doing) from exc


class _StreamWatcher(Watcher, Changes):
    """A stream's view of its channel: every record (or re-subscription) is a wake-up."""

    def __init__(self) -> None:
        self.signal = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._error: BaseException | None = None

    def record(self, data: bytes) -> None:
        self.signal.set()

    def subscribed(self) -> None:
        self._subscribed.set()
        self.signal.set()  # after a reconnect: read again, messages may have been missed

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._subscribed.set()
        self.signal.set()

    async def ready(self) -> None:
        await self._subscribed.wait()
        if self._error is not None:
            raise self._error

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.signal.wait()
        self.signal.clear()
        if self._error is not None:
            raise self._error


class _Listener:
    """The backend's one pub/sub connection: channel -> everyone waiting on it.

    A channel is subscribed while someone watches it. Once its subscription is confirmed,
    its key is read once (the record may predate it) and every later record arrives as a
    message; the last one seen is kept for watchers that come later.

    Unsubscribing is deferred and batched (``_RETIRE_AFTER``): channels are mostly dropped
    one at a time as their results arrive, and one command for many saves a write each (a
    write costs about as much as a round trip on some machines), and a channel watched again
    meanwhile is still subscribed.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self._connection: Connection | None = None  # the subscription connection
        self._watchers: dict[bytes, list[Watcher]] = {}
        self._subscribed: set[bytes] = set()  # what the server was last asked for
        self._confirmed: set[bytes] = set()  # subscribed, and its key read since
        self._retiring: set[bytes] = set()  # unwanted, to be unsubscribed in the next batch
        self._retire_at: float | None = None
        self._last: dict[bytes, bytes] = {}  # last record seen per subscribed channel
        self._dirty: set[bytes] = set()  # channels whose subscription may need to change
        self._changes: asyncio.Event = asyncio.Event()
        self._tasks = Background()
        self._outage = Outage(backend.url, "result listener")
        self._closing = False
        self._runner = asyncio.get_running_loop().create_task(self._run())

    def watch(self, channel: bytes, watcher: Watcher) -> None:
        self._watchers.setdefault(channel, []).append(watcher)
        self._retiring.discard(channel)
        last = self._last.get(channel)
        if channel in self._confirmed:
            watcher.subscribed()
        if last is not None:  # seen on the subscription before this watcher came
            watcher.record(last)
        elif channel not in self._subscribed:
            connection = self._connection
            if connection is not None and connection.usable and not self._dirty:
                # The common case, at once (a turn of the runner costs as much as the send);
                # its confirmation reads the key.
                self._subscribed.add(channel)
                connection.send("SUBSCRIBE", channel)
                self._peek(channel)
            else:
                self._changed(channel)  # the runner (re)connects and subscribes in a batch

    def unwatch(self, channel: bytes, watcher: Watcher) -> None:
        watchers = self._watchers.get(channel)
        if watchers is None:
            return
        with contextlib.suppress(ValueError):
            watchers.remove(watcher)
        if watchers:
            return
        del self._watchers[channel]
        if channel in self._subscribed and not self._dirty:
            self._retiring.add(channel)  # unsubscribed with others, later (see _RETIRE_AFTER)
            if self._retire_at is None:
                self._retire_at = asyncio.get_running_loop().time() + _RETIRE_AFTER
                self._changes.set()  # for the runner to wake up then
        else:
            self._changed(channel)

    def _changed(self, channel: bytes) -> None:
        self._dirty.add(channel)
        self._changes.set()

    def _to_subscribe(self) -> list[bytes]:
        """Watched channels not yet subscribed; unwatched ones join the retiring batch. Only
        channels marked dirty are looked at."""
        new = []
        for channel in self._dirty:
            if channel in self._watchers:
                self._retiring.discard(channel)
                if channel not in self._subscribed:
                    new.append(channel)
            elif channel in self._subscribed:
                self._retiring.add(channel)
        self._dirty.clear()
        if self._retiring and self._retire_at is None:
            self._retire_at = asyncio.get_running_loop().time() + _RETIRE_AFTER
        return new

    def _to_unsubscribe(self) -> list[bytes]:
        """The retiring batch, when it is due (or large), minus channels wanted again."""
        if self._retire_at is None:
            return []
        if (
            len(self._retiring) < _RETIRE_BATCH
            and asyncio.get_running_loop().time() < self._retire_at
        ):
            return []
        gone = [c for c in self._retiring if c not in self._watchers]
        self._retiring.clear()
        self._retire_at = None
        for channel in gone:
            self._subscribed.discard(channel)
            self._confirmed.discard(channel)
            self._last.pop(channel, None)
        return gone

    async def _run(self) -> None:
        """Apply subscription changes; reconnect with backoff forever."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            retire_at = self._retire_at
            timeout = None if retire_at is None else max(0.0, retire_at - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changes.wait()
            if self._closing:
                return
            self._changes.clear()
            new: list[bytes] = []
            gone: list[bytes] = []
            try:
                connection = await self._connect()
                # Recorded before sending: confirmations may come before we resume.
                new = self._to_subscribe()
                self._subscribed.update(new)
                gone = self._to_unsubscribe()
                if new:
                    connection.send("SUBSCRIBE", *new)
                if gone:
                    connection.send("UNSUBSCRIBE", *gone)
            except UNREACHABLE as exc:
                self._lost()
                self._dirty.update(new, gone)
                await self._outage.wait(exc)
                self._changes.set()
                continue
            self._outage.over()

    async def _connect(self) -> Connection:
        """The subscription connection; a new one subscribes again to every channel."""
        if self._connection is not None and self._connection.usable:
            return self._connection
        self._lost()
        connection = await self.backend.client.subscriber(self._pushed)
        self._connection = connection
        self._tasks.spawn(self._watch(connection))
        return connection

    async def _watch(self, connection: Connection) -> None:
        """When the connection drops, start over: every channel is subscribed (and its key
        read) again, so a record published while it was down is not missed."""
        await connection.wait_closed()
        if connection is self._connection and not self._closing:
            self._lost()
            self._changes.set()

    def _lost(self) -> None:
        if self._connection is not None:
            self.backend.client.forget(self._connection)
            self._connection = None
        self._dirty.update(self._subscribed)
        self._subscribed = set()
        self._confirmed.clear()

    def _pushed(self, reply: Reply) -> None:
        """A reply on the subscription connection: a message or a (un)subscribe notice."""
        kind, channel = reply[0], reply[1]
        if kind == b"message":
            self._deliver(channel, reply[2])
        elif kind == b"subscribe" and channel not in self._confirmed:
            reading = self.backend.client.submit("GET", channel)
            if reading is None:  # the shared connection is not open yet
                self._tasks.spawn(self._check(channel))
            else:
                reading.add_done_callback(lambda done: self._checked(channel, done))

    def _peek(self, channel: bytes) -> None:
        """GET the key alongside its SUBSCRIBE: a result stored already (a caller who asks
        once the task is done) ends the wait a round trip sooner than the read after the
        confirmation, which still closes the race for one stored in between. A waiter whose
        result is not there yet pays one GET more, on the shared connection."""
        reading = self.backend.client.submit("GET", channel)
        if reading is not None:
            reading.add_done_callback(lambda done: self._peeked(channel, done))

    def _peeked(self, channel: bytes, reading: asyncio.Future[Reply]) -> None:
        if reading.cancelled() or reading.exception() is not None:
            return  # the read after the confirmation reports it
        data = reading.result()
        if isinstance(data, bytes) and channel not in self._last and is_ready(data):
            self._deliver(channel, data)

    async def _check(self, channel: bytes) -> None:
        """GET the key after its subscription is confirmed: the record may predate it."""
        try:
            data = await self.backend.client.execute("GET", channel)
        except Exception as exc:
            self._unread(channel, exc)
        else:
            self._read(channel, data)

    def _checked(self, channel: bytes, reading: asyncio.Future[Reply]) -> None:
        """``_check`` for a GET sent at once (from a callback, without a task)."""
        if reading.cancelled():
            return
        error = reading.exception()
        if error is not None:
            self._unread(channel, error)
        else:
            self._read(channel, reading.result())

    def _read(self, channel: bytes, data: bytes | None) -> None:
        if channel not in self._subscribed:
            return
        self._confirmed.add(channel)
        if data is not None and channel not in self._last:  # a message may have come first
            self._deliver(channel, data)
        for watcher in list(self._watchers.get(channel, ())):
            watcher.subscribed()

    def _unread(self, channel: bytes, error: BaseException) -> None:
        if isinstance(error, UNREACHABLE):
            log.warning("could not read %s (%s); it is read again on reconnect", channel, error)
            return
        failure = self.backend.failed(error, f"read {channel.decode(errors='replace')}")
        for watcher in list(self._watchers.get(channel, ())):  # not a string key, say
            watcher.fail(failure)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        if channel not in self._subscribed:
            return
        self._last[channel] = data
        for watcher in list(self._watchers.get(channel, ())):
            watcher.record(data)

    async def close(self, error: BaseException) -> None:
        self._closing = True
        self._changes.set()
        tasks = [self._runner, *self._tasks]
        for task in tasks:
            task.cancel()
        if self._connection is not None:
            self.backend.client.forget(self._connection)
        await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)
        for watchers in list(self._watchers.values()):
            for watcher in watchers:
                watcher.fail(error)
        self._watchers.clear()


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _set_command(key: str, data: bytes, expires: float | None) -> list[Any]:
    """SET ``key``, kept ``expires`` seconds: Celery's SETEX for whole seconds, PSETEX for a
    fraction, a plain SET for None (forever)."""
    if expires is None:
        return ["SET", key, data]
    if expires == int(expires) and expires >= 1:
        return ["SETEX", key, int(expires), data]
    return ["PSETEX", key, _milliseconds(expires), data]


def _seconds(expires: float | None) -> int | float:
    """A chord script's expiry argument: Celery's whole seconds (0: none), or a fraction."""
    if expires is None:
        return 0
    return int(expires) if expires == int(expires) else expires


def _index(score: bytes) -> int | None:
    """A part's group index from its score in ``.j`` (+inf: none)."""
    value = float(score)
    return None if math.isinf(value) else int(value)


def _celery_prefix(prefix: str) -> str:
    """Celery's result backend adds ``_`` to a ``global_keyprefix`` that does not end in a
    separator (``:``, ``_``, ``-`` or ``.``); the broker uses the prefix as given."""
    if prefix and prefix[-1] not in ":_-.":
        return prefix + "_"
    return prefix
