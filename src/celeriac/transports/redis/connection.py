"""What the Redis broker and the Redis result backend share: clients, options, outages.

Both talk to Redis through ``client.py`` (celeriac's ``redis`` extra brings
hiredis, its parser). Options come from ``broker_transport_options`` /
``result_backend_transport_options``; an unknown one is an error that lists the known ones,
since a misspelt ``visibility_timeout`` silently left at its default is the kind of bug that
shows up only in production.

A broker and a result store that reach the same database the same way (:func:`same_client`)
share one :class:`~celeriac.transports.redis.client.Client`: the store borrows its broker's
(``RedisBackend.share_connection``, whose module says why). A client is bound to one
database, login, TLS set-up and set of timeouts, so a store that differs in any keeps its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

from celeriac.errors import ConfigurationError
from celeriac.transports.options import Option, checked_options
from celeriac.transports.redis.client import Client, ReplyError, parse_url
from celeriac.transports.urls import redacted

log = logging.getLogger("celeriac.redis")

#: Errors that mean "Redis is unreachable right now" (a restart, a network cut, loading): the
#: client raises ConnectionError, TimeoutError or another OSError for all of them.
UNREACHABLE: tuple[type[Exception], ...] = (OSError,)

#: What to do about an error reply, by its first word: the fix a refusal's message names.
_FIXES = {
    "NOAUTH": "it wants a password: give it in the URL (redis://:password@host:port/db)",
    "WRONGPASS": "check the user name and password in the URL",
    "NOPERM": "its user lacks a permission celeriac needs: grant it (ACL SETUSER)",
    "WRONGTYPE": (
        "a key celeriac uses holds another type of value: delete it, or give celeriac keys"
        " of their own with the global_keyprefix transport option"
    ),
    "OOM": "it is out of memory (maxmemory): free some, or raise its limit",
    "READONLY": "it is a read-only replica: point the URL at the primary",
    "MISCONF": "it cannot save its data to disk: see its log",
}


def refusal(url: str, exc: ReplyError, doing: str, setting: str) -> str:
    """The message of an error reply's celeriac error: the server (its password hidden),
    what was being done, Redis's words and the fix."""
    text = str(exc)
    # The first word, or (an older Redis's script errors: "ERR Error running script ...
    # WRONGTYPE ...") one further in.
    code = next((c for c in _FIXES if text.startswith(c)), None)
    code = code or next((c for c in _FIXES if f" {c} " in text), None)
    fix = _FIXES.get(code or "", f"check the server, and that {setting} points at it")
    return f"Redis at {redacted(url)} refused {doing}: {exc}; {fix}"


#: Options of the client itself, with their types.
_CLIENT_OPTIONS = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": float,
}
T = TypeVar("T")


def check_options(options: dict[str, Any], own: dict[str, Option], what: str) -> dict[str, Any]:
    """``options`` checked (see :mod:`celeriac.transports.options`) and merged over the
    defaults in ``own`` and the client's options."""
    client = {name: Option(kind, None) for name, kind in _CLIENT_OPTIONS.items()}
    return checked_options(options, {**own, **client}, what, "the Redis transport")


def client_from_url(url: str, options: dict[str, Any]) -> Client:
    """A client for ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS).

    It connects on first use. A command that fails because Redis went away is not retried
    here: acks, results and claims ride outages out with :func:`until_done`, publishing
    raises at once.
    """
    return Client(url, **client_settings(options))


def client_settings(options: dict[str, Any]) -> dict[str, float]:
    """The client's own options among checked ``options`` (:func:`check_options`), those
    set, as :class:`~celeriac.transports.redis.client.Client` takes them."""
    return {
        name: cast(options[name])
        for name, cast in _CLIENT_OPTIONS.items()
        if options.get(name) is not None
    }


def same_client(url: str, settings: dict[str, float], other: str, others: dict[str, float]) -> bool:
    """Whether one client serves both ``url`` and ``other``: the same host, port, database,
    user, password and TLS set-up (``rediss://`` and its parameters), and the same client
    settings (:func:`client_settings`). A host named two ways (``localhost``, ``127.0.0.1``)
    counts as two; a URL that does not parse never matches (the client made for it reports
    the problem when it connects)."""
    try:
        return settings == others and _reach(url) == _reach(other)
    except (ConfigurationError, ValueError):
        return False


def _reach(url: str) -> tuple[object, ...]:
    """How ``url`` reaches its database. TLS is compared as its scheme and parameters: two
    TLS contexts never compare equal, and making one would read certificate files."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"{redacted(url)} is not a redis:// or rediss:// URL")
    address = parse_url(urlunsplit(("redis", parts.netloc, parts.path, "", "")))
    tls = sorted((name, values[-1]) for name, values in parse_qs(parts.query).items())
    return address, parts.scheme, tls


#: The first retry comes this soon after a failure; each later one twice as late, up to the cap.
BACKOFF_START = 0.05
BACKOFF_CAP = 5.0


class Outage:
    """Backoff while Redis is unreachable, with one log line when it goes and one when it
    comes back (not one per failed attempt).

    Everything one component (the broker, say) does with Redis shares one ``Outage``: the
    first failure logs, every failure waits and doubles the delay (from ``BACKOFF_START`` to
    ``BACKOFF_CAP``, with jitter so that many workers do not retry in step), and only an
    answer from Redis ends it: call :meth:`over` after a command succeeded, never after an
    error was swallowed, or each retry would log a false recovery and reset the backoff.
    """

    def __init__(self, url: str, what: str) -> None:
        self.url = redacted(url)
        self.what = what
        self._delay = 0.0
        self.down = False

    async def wait(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning(
                "%s: Redis at %s is unreachable (%s: %s); retrying with backoff up to %g s",
                self.what,
                self.url,
                type(exc).__name__,
                exc,
                BACKOFF_CAP,
            )
        await asyncio.sleep(self.next_delay())

    def next_delay(self) -> float:
        """How long to wait before the next attempt: twice the last delay, capped, jittered."""
        self._delay = min(max(self._delay * 2, BACKOFF_START), BACKOFF_CAP)
        return self._delay * random.uniform(0.75, 1.25)

    def over(self) -> None:
        if self.down:
            self.down = False
            log.warning("%s: Redis at %s is reachable again", self.what, self.url)
        self._delay = 0.0


async def until_done(
    operation: Callable[[], Awaitable[T]], outage: Outage, *, give_up: Callable[[], bool]
) -> T:
    """Run ``operation`` until Redis answers; for work that must not be dropped (acks,
    results). ``give_up()`` true (the client is closing) re-raises the last error."""
    while True:
        try:
            result = await operation()
        except UNREACHABLE as exc:
            if give_up():
                raise
            await outage.wait(exc)
        else:
            outage.over()
            return result


class Coalescer(Generic[T]):
    """Items added while one flush is in flight form the next flush: many acks, one round trip.

    ``add`` returns a future that resolves when the flush holding the item is done.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._flush = flush
        self._items: list[T] = []
        self._done: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    def add(self, item: T) -> asyncio.Future[None]:
        self._items.append(item)
        if self._done is None:
            loop = asyncio.get_running_loop()
            self._done = loop.create_future()
            if self._runner is None:
                self._runner = loop.create_task(self._run())
        return self._done

    async def _run(self) -> None:
        try:
            while self._items:
                items, done = self._items, self._done
                self._items, self._done = [], None
                assert done is not None
                try:
                    await self._flush(items)
                except BaseException as exc:
                    if not done.done():
                        done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._runner = None

    async def close(self) -> None:
        """Wait for the flushes in flight."""
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
