"""A small asyncio Redis client: the commands celeriac's Redis transport sends, and no more.

Why not redis-py's asyncio client: importing it costs about 10 MiB of a worker's memory, and
every command pays for a pooled connection checked out and back in (a lock, a timeout
context, a readiness check on the socket) and for retry and metrics wrappers: 60-100 µs of
CPU per command, several times what Redis itself spends. A worker sends about five commands
per task, so that overhead was most of a task's cost.

Here every caller of a :class:`Client` shares one connection: commands are written in the
order they are made, what is made during one turn of the event loop goes out in one send,
and Redis answers in order, so replies are matched first in, first out. A blocking command
(BRPOP) or a subscription must not hold up everyone else: they get a connection of their own
(:meth:`Client.connection`, :meth:`Client.subscriber`). Replies are parsed by hiredis.

Text: replies are bytes; a ``str`` argument is sent as UTF-8, except that a lone surrogate
from ``surrogateescape`` stands for the byte it was decoded from (see :func:`pack`), so
callers can hold non-UTF-8 keys, fields and values as ``str`` and send them back unchanged.

Errors: anything that means "Redis cannot be reached right now" (refused, reset, timed out,
still loading its data) is an :class:`OSError`, and a command that may or may not have run
when its connection dropped is never retried here: whether it is safe to send again is the
caller's call. An error reply is a :class:`ReplyError`; one to the log-in or the database
choice is a :class:`~celeriac.errors.ConfigurationError` (waiting would not fix it).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from celeriac.errors import ConfigurationError
from celeriac.transports.urls import redacted

Arg = bytes | str | int | float
Reply = Any  # bytes, int, None, or a list of replies


class ReplyError(Exception):
    """Redis answered a command with an error (``WRONGTYPE ...``, ``NOSCRIPT ...``)."""


class LoadingError(ConnectionError):
    """Redis is up but still loading its data: as good as unreachable for now."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where a Redis server is and how to log in, from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None


_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
}
_TLS_PARAMETERS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def parse_url(url: str) -> Address:
    """``redis://[[user]:password@]host[:port][/db]``; ``rediss://`` adds TLS, set up by the
    query parameters Celery users already put there (``ssl_cert_reqs``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"{redacted(url)} is not a redis:// or rediss:// URL")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
        port = parts.port or 6379
    except ValueError:
        raise ConfigurationError(
            f"{redacted(url)}: the port and the database must be numbers, as in redis://host:6379/0"
        ) from None
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(_TLS_PARAMETERS))
    if unknown or (query and parts.scheme == "redis"):
        raise ConfigurationError(
            f"{redacted(url)}: unknown URL parameter(s) {', '.join(unknown or query)}; a"
            f" rediss:// URL takes {', '.join(_TLS_PARAMETERS)}, a redis:// URL none"
        )
    tls = _tls_context(url, query) if parts.scheme == "rediss" else None
    return Address(
        host=parts.hostname or "localhost",
        port=port,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


def _tls_context(url: str, query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ConfigurationError(
            f"{redacted(url)}: ssl_cert_reqs={reqs} is not one of none, optional, required"
        )
    if _CERT_REQS[reqs] != ssl.CERT_REQUIRED:
        context.check_hostname = False
    context.verify_mode = _CERT_REQS[reqs]
    if "ssl_certfile" in query:
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    return context


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP, the form Redis reads (hiredis writes it: in C, about three times
    faster than building it in Python, and every task's result costs two commands).

    A ``str`` goes as UTF-8, and a lone surrogate in it as the byte ``surrogateescape``
    made it from: bytes Redis handed out that are not UTF-8 (a hash field, a delivery tag),
    decoded with ``surrogateescape``, go back exactly as they came.
    """
    try:
        # hiredis's stub types the argument as a 1-tuple; any length is accepted.
        packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    except UnicodeEncodeError:  # rare: only then is each argument looked at
        packed = hiredis.pack_command(tuple(_escaped(arg) for arg in args))  # type: ignore[arg-type]
    return packed


def _escaped(arg: Arg) -> Arg:
    return arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg


class _Protocol(asyncio.Protocol):
    """One socket: bytes out in batches, replies in to the futures waiting for them, in order,
    or to ``on_push`` on a subscriber connection."""

    def __init__(self, on_push: Callable[[Reply], None] | None) -> None:
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self.on_push = on_push
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self._loop = asyncio.get_running_loop()  # a connection belongs to the loop it opened on
        self.closed = self._loop.create_future()
        self.last_reply = time.monotonic()
        # Set while the transport's buffer is over its high-water mark: senders wait on it, so
        # a producer faster than the network does not buffer without bound.
        self.writable: asyncio.Future[None] | None = None
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self.last_reply = time.monotonic()
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(ConnectionError(f"Redis sent something that is not RESP: {exc}"))
                return
            if reply is False:
                return
            if self.waiting:
                future = self.waiting.popleft()
                if future.done():  # its caller gave up waiting
                    continue
                if isinstance(reply, ReplyError):
                    error: Exception = reply
                    if str(reply).startswith("LOADING"):
                        error = LoadingError(str(reply))
                    future.set_exception(error)
                else:
                    future.set_result(reply)
            elif self.on_push is not None:
                self.on_push(reply)

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None:
            if not self.writable.done():
                self.writable.set_result(None)
            self.writable = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(exc or ConnectionError("Redis closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = (
                exc
                if isinstance(exc, ConnectionError)
                else ConnectionError(f"the connection to Redis was dropped: {exc}")
            )
        self._outgoing.clear()
        self.resume_writing()  # wake senders: they find the connection lost
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)
                future.exception()  # a caller that gave up must not get a warning

    def abort(self, exc: BaseException) -> None:
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, commands: Iterable[bytes], replies: int) -> list[asyncio.Future[Reply]]:
        """Queue commands for the next write; ``replies`` futures, one per expected reply."""
        if self.lost is not None:
            raise self.lost
        loop = self._loop
        if self.waiting or self._outgoing:
            # Busy: join the batch written at the end of this loop turn (one send for all).
            if not self._outgoing:
                loop.call_soon(self._write)
            self._outgoing.extend(commands)
        elif self.transport is not None:
            # Idle: nothing to batch with, and a turn of the loop costs more than the send.
            self.transport.write(b"".join(commands))
        futures = [loop.create_future() for _ in range(replies)]
        self.waiting.extend(futures)
        return futures

    def _write(self) -> None:
        if self._outgoing and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self._outgoing))
        self._outgoing.clear()


class Connection:
    """One Redis connection; made by :class:`Client`, which logs it in and picks its db."""

    def __init__(self, protocol: _Protocol, socket_timeout: float | None) -> None:
        self._protocol = protocol
        self._socket_timeout = socket_timeout

    @property
    def usable(self) -> bool:
        return self._protocol.lost is None

    @property
    def idle_for(self) -> float:
        return time.monotonic() - self._protocol.last_reply

    async def execute(self, *args: Arg, timeout: float | None = None) -> Reply:
        """Send one command and wait for its reply. ``timeout`` (else ``socket_timeout``)
        bounds the wait; a connection that misses it is dropped, since it is either dead or
        stuck behind something that will not end."""
        if self._protocol.writable is not None:
            await self._room()
        (future,) = self._protocol.send([pack(args)], 1)
        if timeout is None and self._socket_timeout is None:
            return await future  # the common case, without a layer of coroutine
        return await self._reply(future, timeout)

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Reply | Exception]:
        """Send commands in one write; every reply or error reply, in order."""
        if self._protocol.writable is not None:
            await self._room()
        futures = self._protocol.send([pack(c) for c in commands], len(commands))
        replies: list[Reply | Exception] = []
        for future in futures:
            try:
                replies.append(await self._reply(future, None))
            except ReplyError as exc:
                replies.append(exc)
        return replies

    def send(self, *args: Arg) -> None:
        """Send a command whose replies come as pushes (SUBSCRIBE, UNSUBSCRIBE)."""
        self._protocol.send([pack(args)], 0)

    def submit(self, *args: Arg) -> asyncio.Future[Reply]:
        """Send one command now and return its reply's future, for callers that must not
        wait (a callback): no flow control, no ``socket_timeout``."""
        (future,) = self._protocol.send([pack(args)], 1)
        return future

    async def _room(self) -> None:
        writable = self._protocol.writable
        if writable is not None:
            await asyncio.shield(writable)  # one waiter cancelled must not wake the others

    async def _reply(self, future: asyncio.Future[Reply], timeout: float | None) -> Reply:
        timeout = timeout if timeout is not None else self._socket_timeout
        if timeout is None:
            return await future
        # A timer rather than asyncio.wait_for, which costs a task's worth of bookkeeping on
        # every BRPOP.
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, future, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[Reply], timeout: float) -> None:
        if not future.done():
            exc = TimeoutError(f"Redis did not answer within {timeout} s")
            future.set_exception(exc)
            self._protocol.abort(exc)

    def close(self) -> None:
        self._protocol.abort(ConnectionError("the connection was closed"))

    async def wait_closed(self) -> None:
        await self._protocol.closed


class Script:
    """A Lua script run by its SHA1 (EVALSHA), sent in full only when Redis lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def evalsha(self, keys: Sequence[Arg], args: Sequence[Arg]) -> list[Arg]:
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def eval(self, keys: Sequence[Arg], args: Sequence[Arg]) -> list[Arg]:
        return ["EVAL", self.source, len(keys), *keys, *args]


def _missing_script(reply: object) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


class Pipeline:
    """Commands sent in one write and answered together (not a transaction)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._commands: list[list[Arg]] = []
        self._scripts: dict[int, tuple[Script, Sequence[Arg], Sequence[Arg]]] = {}

    def __len__(self) -> int:
        return len(self._commands)

    def add(self, *args: Arg) -> None:
        self._commands.append(list(args))

    def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> None:
        self._scripts[len(self._commands)] = (script, keys, args)
        self._commands.append(script.evalsha(keys, args))

    async def execute(self) -> list[Reply]:
        """Every reply, in order; the first error reply is raised once all have come."""
        if not self._commands:
            return []
        connection = await self._client.shared()
        replies = await connection.execute_many(self._commands)
        missing = [i for i, reply in enumerate(replies) if _missing_script(reply)]
        if missing:  # Redis restarted or was flushed since: those scripts did not run
            commands = [self._scripts[i][0].eval(*self._scripts[i][1:]) for i in missing]
            for i, reply in zip(missing, await connection.execute_many(commands), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


class Client:
    """Commands to one Redis database, multiplexed on one connection (see the module doc).

    Options: ``socket_connect_timeout`` (5 s), ``socket_timeout`` (none: how long a reply
    may take before its connection is dropped as dead), ``health_check_interval`` (none: a
    connection idle that long answers a PING before it is used again).
    """

    def __init__(
        self,
        url: str,
        *,
        socket_connect_timeout: float | None = 5.0,
        socket_timeout: float | None = None,
        health_check_interval: float | None = None,
    ) -> None:
        self.url = url
        self.address = parse_url(url)
        self.socket_connect_timeout = socket_connect_timeout
        self.socket_timeout = socket_timeout
        self.health_check_interval = health_check_interval
        self._shared: Connection | None = None
        self._connecting: asyncio.Task[Connection] | None = None
        self._others: set[Connection] = set()
        self._closed = False

    # -- connections -------------------------------------------------------------------------

    async def shared(self) -> Connection:
        """The connection every plain command goes on, (re)opened on demand."""
        connection = self._shared
        if connection is not None and connection.usable:
            interval = self.health_check_interval
            if interval and connection.idle_for > interval:
                try:
                    await connection.execute("PING")
                except OSError:
                    connection.close()  # opened again below
                else:
                    return connection
            else:
                return connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open_shared())
        return await asyncio.shield(self._connecting)

    async def _open_shared(self) -> Connection:
        # Kept here, not by whoever awaits this: a caller cancelled meanwhile must not leave
        # the new connection with no one to close it.
        self._shared = await self._open(None)
        return self._shared

    async def connection(self) -> Connection:
        """A connection of the caller's own, for a blocking command; close it when done."""
        connection = await self._open(None)
        self._others.add(connection)
        return connection

    async def subscriber(self, on_push: Callable[[Reply], None]) -> Connection:
        """A connection for SUBSCRIBE: every reply on it goes to ``on_push``."""
        connection = await self._open(on_push)
        self._others.add(connection)
        return connection

    async def _open(self, on_push: Callable[[Reply], None] | None) -> Connection:
        if self._closed:
            raise ConnectionError(f"the client of {redacted(self.url)} is closed")
        address = self.address
        loop = asyncio.get_running_loop()
        protocol = _Protocol(None)
        try:
            async with asyncio.timeout(self.socket_connect_timeout):
                raw, _ = await loop.create_connection(lambda: protocol, address.host, address.port)
                if address.tls is not None:
                    await self._start_tls(raw, protocol, address.tls, address.host)
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(
                f"Redis at {redacted(self.url)} has a certificate this client does not trust"
                f" ({exc.verify_message}); name its CA with ?ssl_ca_certs=/path/ca.pem in the"
                " URL (or ssl_cert_reqs=none to skip the check)"
            ) from None
        connection = Connection(protocol, self.socket_timeout)
        try:
            if address.password is not None:
                login = [address.username, address.password] if address.username else []
                await connection.execute("AUTH", *(login or [address.password]))
            if address.db:
                await connection.execute("SELECT", address.db)
        except ReplyError as exc:
            connection.close()
            # Not an outage: retrying cannot help, so it must not be ridden out as one.
            raise ConfigurationError(
                f"Redis at {redacted(self.url)} refused the connection's set-up: {exc}; check"
                " the user name, password and database number in the URL"
            ) from None
        except BaseException:
            connection.close()
            raise
        if self._closed:  # aclose() ran while this connection was being opened
            connection.close()
            raise ConnectionError(f"the client of {redacted(self.url)} is closed")
        protocol.on_push = on_push
        return connection

    @staticmethod
    async def _start_tls(
        raw: asyncio.Transport, protocol: _Protocol, context: ssl.SSLContext, host: str
    ) -> None:
        """TLS over a TCP connection already made. In two steps rather than
        ``create_connection(ssl=...)``: when the handshake fails (an untrusted certificate),
        the raw connection is closed here; asyncio's one-step path can leave its socket open."""
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(raw, protocol, context, server_hostname=host)
        except BaseException:
            # asyncio made a TLS transport for us before the handshake and, when the
            # handshake fails, may never mark it closed (CPython 3.11): it would warn
            # "unclosed transport" whenever it is collected. After a failed handshake its
            # close() only marks it closed.
            tls_layer = raw.get_protocol()
            if tls_layer is not protocol:
                unused = getattr(tls_layer, "_app_transport", None)
                if isinstance(unused, asyncio.BaseTransport):
                    unused.close()
            raw.abort()
            raise
        if secured is None:  # only a loop without TLS support returns None
            raw.abort()
            raise ConnectionError("this event loop cannot start TLS")
        protocol.transport = secured

    def forget(self, connection: Connection) -> None:
        """Close a connection from :meth:`connection` or :meth:`subscriber`."""
        self._others.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        self._closed = True
        connections = [*self._others, *([self._shared] if self._shared else [])]
        self._others.clear()
        for connection in connections:
            connection.close()
        for connection in connections:
            await connection.wait_closed()

    # -- commands ----------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Reply:
        connection = self._shared
        if connection is None or not connection.usable or self.health_check_interval:
            connection = await self.shared()
        return await connection.execute(*args)

    def submit(self, *args: Arg) -> asyncio.Future[Reply] | None:
        """Send one command now on the shared connection, if it is open and needs no health
        check first (else None: use :meth:`execute`); returns its reply's future."""
        connection = self._shared
        if connection is None or not connection.usable or self.health_check_interval:
            return None
        return connection.submit(*args)

    def pipeline(self) -> Pipeline:
        return Pipeline(self)

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        connection = self._shared
        if connection is None or not connection.usable or self.health_check_interval:
            connection = await self.shared()
        try:
            return await connection.execute(*script.evalsha(keys, args))
        except ReplyError as exc:
            if not _missing_script(exc):
                raise
            return await connection.execute(*script.eval(keys, args))

    async def scan_keys(self, match: str) -> AsyncIterator[bytes]:
        """Every key matching ``match`` (SCAN: keys added meanwhile may be missed)."""
        cursor: bytes = b"0"
        while True:
            cursor, keys = await self.execute("SCAN", cursor, "MATCH", match, "COUNT", 1000)
            for key in keys:
                yield key
            if cursor == b"0":
                return

    async def scan_hash(self, key: str) -> AsyncIterator[tuple[bytes, bytes]]:
        """Every field and value of the hash ``key`` (HSCAN)."""
        cursor: bytes = b"0"
        while True:
            cursor, items = await self.execute("HSCAN", key, cursor, "COUNT", 1000)
            for i in range(0, len(items), 2):
                yield items[i], items[i + 1]
            if cursor == b"0":
                return
