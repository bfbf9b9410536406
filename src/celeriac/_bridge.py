"""The sync side of the API: runs the async implementation on a private event loop.

Every public call that does I/O is written once, as a coroutine. Called from a thread with
no running event loop (Flask, Django views, scripts, plain ``def`` tasks), it is handed to a
loop that lives in one private daemon thread per process and the caller blocks on the
answer. Inside a worker, that loop is the worker's own, so sync tasks share its connections.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def in_async_context() -> bool:
    """True when the calling thread runs an event loop: the caller must ``await``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def use_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Send sync calls to ``loop`` (the worker's) instead of the private thread's loop."""
    global _loop
    with _lock:
        _loop = loop


def _bridge_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=serve, name="celeriac-sync-bridge", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the bridge loop and block the calling thread until it ends."""
    loop = _bridge_loop()
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result()


def dual(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Hand ``coro`` back to an async caller, or run it to the end for a sync caller: the
    one way every dual API (``delay``, ``get``, ...) serves both kinds of code."""
    if in_async_context():
        return coro
    return cast(Awaitable[T], run(coro))


async def _now(value: T) -> T:
    return value


def answer(value: T) -> Awaitable[T]:
    """``value`` as the dual API hands it out: awaitable in async code, itself in sync code
    (an eager result has nothing to read, so it needs no event loop)."""
    if in_async_context():
        return _now(value)
    return cast(Awaitable[T], value)
