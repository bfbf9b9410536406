"""Cross-process wake-ups: UNIX datagram sockets in a per-database directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.transports.sqlite import wakeup as _wakeup
from celeriac.transports.sqlite.wakeup import Listener, Notifier, channel_directory

pytestmark = pytest.mark.skipif(not _wakeup.SUPPORTED, reason="needs UNIX datagram sockets")

WAIT = 5.0


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[str]:
    directory = channel_directory(str(tmp_path / "test.db"), "tasks")
    yield directory
    shutil.rmtree(os.path.dirname(directory), ignore_errors=True)


def sockets(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".sock"))


def listen(directory: str) -> tuple[Listener, asyncio.Event]:
    listener = Listener(directory)
    listener.open()
    signal = asyncio.Event()
    listener.subscribe(signal.set)
    return listener, signal


def test_directory_is_per_database_and_channel(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    assert channel_directory(db, "tasks") == channel_directory(f"{tmp_path}/./a.db", "tasks")
    assert channel_directory(db, "tasks") != channel_directory(db, "results")
    assert channel_directory(db, "tasks") != channel_directory(str(tmp_path / "b.db"), "tasks")


async def test_notify_wakes_a_listener_in_this_process(channel: str) -> None:
    listener, signal = listen(channel)
    notifier = Notifier(channel)
    try:
        notifier.notify()
        await asyncio.wait_for(signal.wait(), WAIT)
    finally:
        listener.close()
        notifier.close()


async def test_notify_reaches_a_listener_that_came_after_the_listing(channel: str) -> None:
    first, _ = listen(channel)
    notifier = Notifier(channel)
    notifier.notify()  # lists the directory: only the first listener is there
    second, signal = listen(channel)
    try:
        notifier.notify()
        await asyncio.wait_for(signal.wait(), WAIT)
    finally:
        for listener in (first, second):
            listener.close()
        notifier.close()


async def test_notify_from_another_process(channel: str) -> None:
    listener, signal = listen(channel)
    code = (
        "import sys; from celeriac.transports.sqlite.wakeup import Notifier;"
        " Notifier(sys.argv[1]).notify()"
    )
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, channel)
        assert await proc.wait() == 0
        await asyncio.wait_for(signal.wait(), WAIT)
    finally:
        listener.close()


async def test_listener_in_another_process_is_woken(channel: str) -> None:
    code = """
import asyncio, sys
from celeriac.transports.sqlite.wakeup import Listener
async def main():
    listener = Listener(sys.argv[1]); listener.open()
    signal = asyncio.Event(); listener.subscribe(signal.set)
    print("ready", flush=True)
    await signal.wait()
    listener.close()
    print("woken", flush=True)
asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, channel, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    notifier = Notifier(channel)
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), WAIT) == b"ready\n"
        notifier.notify()
        assert await asyncio.wait_for(proc.stdout.readline(), WAIT) == b"woken\n"
        assert await proc.wait() == 0
    finally:
        notifier.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_stale_socket_is_removed_and_others_still_woken(channel: str) -> None:
    os.makedirs(channel, exist_ok=True)
    stale = os.path.join(channel, "999999-dead.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(stale)
    dead.close()  # as after kill -9: the file stays, nobody reads it
    listener, signal = listen(channel)
    notifier = Notifier(channel)
    try:
        notifier.notify()
        assert "999999-dead.sock" not in sockets(channel)
        await asyncio.wait_for(signal.wait(), WAIT)
    finally:
        listener.close()
        notifier.close()


async def test_close_unlinks_and_unsubscribe_stops(channel: str) -> None:
    listener = Listener(channel)
    listener.open()
    calls: list[int] = []
    unsubscribe = listener.subscribe(lambda: calls.append(1))
    signal = asyncio.Event()
    listener.subscribe(signal.set)
    unsubscribe()
    notifier = Notifier(channel)
    notifier.notify()
    await asyncio.wait_for(signal.wait(), WAIT)
    assert calls == []
    assert len(sockets(channel)) == 1
    listener.close()
    assert sockets(channel) == []
    notifier.notify()  # nobody listens: nothing to do, nothing raised
    notifier.close()


async def test_full_buffer_is_not_an_error(channel: str) -> None:
    listener, signal = listen(channel)
    notifier = Notifier(channel)
    try:
        for _ in range(5000):  # far past a datagram socket's queue
            notifier.notify()
        await asyncio.wait_for(signal.wait(), WAIT)
        assert len(sockets(channel)) == 1  # a full buffer is not a stale socket
    finally:
        listener.close()
        notifier.close()


async def test_fallback_polls_without_sockets(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_wakeup, "SUPPORTED", False)
    listener, signal = listen(channel)
    try:
        assert listener.polling
        await asyncio.wait_for(signal.wait(), WAIT)
        Notifier(channel).notify()  # a no-op, not an error
    finally:
        listener.close()
    assert not listener.polling
