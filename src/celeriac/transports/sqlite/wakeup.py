"""Cross-process wake-ups between celeriac processes on one machine.

Processes that share a SQLite file must tell each other "something changed" (a task was
published, a result became ready) without hammering the database. Each listening process
binds a UNIX datagram socket in a directory derived from the database's real path and a
channel name (``tasks``, ``results``); a notifier sends one byte to every socket there.

A datagram is a hint, not a message: listeners re-read the database, so lost, duplicated or
coalesced wake-ups are harmless, and callers keep a slow safety poll for the rare lost one.
Where UNIX datagram sockets are missing (or the socket path cannot be bound), a listener
falls back to waking its subscribers every :data:`FALLBACK_POLL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Whether this platform has the UNIX datagram sockets the wake-ups use.
SUPPORTED = hasattr(socket, "AF_UNIX") and sys.platform.startswith(("linux", "darwin"))
#: How often subscribers are woken when real wake-ups are unavailable.
FALLBACK_POLL = 0.05
#: How long a notifier trusts its cached listing of the channel directory.
LISTING_TTL = 0.5

# A peer whose socket file exists but nobody reads it: the file is stale.
_STALE = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK})
# The receiver's buffer is full: it already has a pending byte, which is all it needs.
_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


def channel_directory(db_path: str, channel: str) -> str:
    """The directory of ``channel`` for the database at ``db_path``.

    Keyed by the file's real path so that every spelling of one database (relative,
    absolute, through a symlink) meets in the same place.
    """
    real = os.path.realpath(db_path).encode()
    digest = hashlib.sha1(real, usedforsecurity=False).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"celeriac-{digest}", channel)


class Listener:
    """One socket of this process in a channel; calls its subscribers on every wake-up.

    Bound to the event loop it is opened on. Subscribers are plain callables (typically
    ``asyncio.Event.set``) run on that loop.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path: str | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._subscribers: list[Callable[[], None]] = []

    @property
    def polling(self) -> bool:
        """True when this listener fell back to waking subscribers on a timer."""
        return self._timer is not None

    def open(self) -> None:
        """Bind the socket (or start the fallback timer) on the running loop."""
        self._loop = asyncio.get_running_loop()
        if SUPPORTED:
            try:
                self._bind()
                return
            except OSError as exc:
                log.warning(
                    "cannot bind a wake-up socket in %s (%s): polling every %.0f ms instead",
                    self.directory,
                    exc,
                    FALLBACK_POLL * 1000,
                )
        self._schedule_poll()

    def _bind(self) -> None:
        assert self._loop is not None
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        self._sock, self.path = sock, path
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _schedule_poll(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(FALLBACK_POLL, self._on_poll)

    def _on_poll(self) -> None:
        self._schedule_poll()
        self._fire()

    def _on_readable(self) -> None:
        assert self._sock is not None
        # Drain everything: many notifications since the last read mean one thing.
        while True:
            try:
                self._sock.recv(64)
            except OSError:  # BlockingIOError: drained
                break
        self._fire()

    def _fire(self) -> None:
        for callback in list(self._subscribers):
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on every wake-up; returns the function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def close(self) -> None:
        """Stop listening and remove the socket file so notifiers stop sending to it."""
        self._subscribers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None


class Notifier:
    """Sends a one-byte wake-up to every listener of a channel.

    Not thread-safe: each owner calls it from one thread (the SQLite modules call it from
    their database thread, right after a commit, so the event loop never waits on it).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._sock: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_at = -1.0
        self._listed_mtime = -1

    def notify(self) -> None:
        """Wake every listener in the channel; never raises, never blocks."""
        if not SUPPORTED:
            return
        try:
            peers = self._listing()
        except OSError:
            return  # no directory yet: nobody listens
        sock = self._socket()
        for peer in peers:
            self._send(sock, peer)

    def _listing(self) -> list[str]:
        # A new listener changes the directory's mtime: re-list at once rather than
        # waiting for the cache to age, so its first wake-up is not missed. The age
        # check covers file systems whose mtime is too coarse to show two quick changes.
        mtime = os.stat(self.directory).st_mtime_ns
        age = time.monotonic() - self._listed_at
        if mtime != self._listed_mtime or age > LISTING_TTL:
            names = os.listdir(self.directory)
            self._peers = [os.path.join(self.directory, n) for n in names if n.endswith(".sock")]
            self._listed_at, self._listed_mtime = time.monotonic(), mtime
        return self._peers

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        return self._sock

    def _send(self, sock: socket.socket, peer: str) -> None:
        try:
            sock.sendto(b"\x01", peer)
        except OSError as exc:
            if exc.errno in _STALE:
                self._forget(peer)
            elif exc.errno not in _FULL:
                log.debug("wake-up to %s failed: %s", peer, exc)

    def _forget(self, peer: str) -> None:
        # The process that bound it died without unlinking it (kill -9).
        with contextlib.suppress(OSError):
            os.unlink(peer)
        self._listed_at = -1.0

    def close(self) -> None:
        """Release the sending socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
