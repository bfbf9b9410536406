"""Resources: what a worker process builds once and lends to every task it runs.

A model, a connection pool, an SMTP session or a cache costs far more to build than a task
costs to run, so a worker builds each declared resource when it starts, before its first
task, hands the same instance to every task of the process (async and sync tasks alike), and
tears it down after its last task, on a graceful stop. A task says what it needs with a
parameter whose default is :func:`use`::

    @app.resource
    async def smtp() -> AsyncIterator[SMTP]:
        client = await connect_smtp()
        yield client                  # what tasks receive
        await client.quit()           # teardown, once, when the worker stops

    @app.task
    async def send_email(to: str, mailer: SMTP = use(smtp)) -> None: ...

A factory may be an async or sync generator (setup, one ``yield``, teardown) or a plain
async or sync function (no teardown). Sync factories run in a thread, so loading a model
does not stall the event loop. Instances live per process: every child of a process pool
builds its own, which is the point (a connection must not cross a ``fork``).

Calling a task inline in a process whose worker has not started its resources is an error
that says so, unless the caller passes the parameter itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from typing import Any, Generic, TypeVar, cast

from celeriac.errors import ResourceError

T = TypeVar("T")
log = logging.getLogger("celeriac.resources")


class Resource(Generic[T]):
    """A declared resource (``@app.resource``); :func:`use` it as a task parameter's default."""

    def __init__(self, name: str, factory: Callable[[], Any]) -> None:
        self.name = name
        self.factory = factory

    def __repr__(self) -> str:
        return f"<resource {self.name}>"


class _Use:
    """The default value that marks a parameter for injection."""

    __slots__ = ("resource",)

    def __init__(self, resource: Resource[Any]) -> None:
        self.resource = resource

    def __repr__(self) -> str:
        return f"use({self.resource.name})"


def use(resource: Resource[T]) -> T:
    """Default value for a task parameter that receives ``resource``'s instance.

    Typed as the instance, so ``mailer: SMTP = use(smtp)`` type-checks; the worker fills the
    parameter in (a caller that passes it explicitly wins)."""
    return cast(T, _Use(resource))


def injected_parameters(signature: inspect.Signature) -> dict[str, Resource[Any]]:
    """Parameter name -> resource, for every parameter whose default is :func:`use`."""
    return {
        name: param.default.resource
        for name, param in signature.parameters.items()
        if isinstance(param.default, _Use)
    }


class _Live:
    """One started resource: its instance and how to tear it down."""

    def __init__(self, instance: Any, teardown: Callable[[], Any] | None) -> None:
        self.instance = instance
        self.teardown = teardown
        self.users = 1


#: The resources started in this process, shared by every worker it runs.
_live: dict[Resource[Any], _Live] = {}


def instance(resource: Resource[T], *, task: str) -> T:
    """``resource``'s instance in this process (started by a worker)."""
    live = _live.get(resource)
    if live is None:
        raise ResourceError(
            f"task {task} uses the resource {resource.name!r}, which only a running worker"
            " builds: run it through a worker, or pass that parameter yourself to call it inline"
        )
    return cast(T, live.instance)


class Resources:
    """The resources one worker starts before its first task and closes after its last."""

    def __init__(self, declared: Mapping[str, Resource[Any]]) -> None:
        self._declared = list(declared.values())
        self._started: list[Resource[Any]] = []

    async def start(self) -> None:
        """Build every declared resource, in declaration order; if one fails, tear down the
        ones already built and raise :class:`ResourceError` naming it."""
        for resource in self._declared:
            live = _live.get(resource)
            if live is not None:  # another worker of this process built it
                live.users += 1
            else:
                try:
                    _live[resource] = await _build(resource)
                except Exception as exc:
                    await self.close()
                    raise ResourceError(
                        f"resource {resource.name!r} failed to start: {type(exc).__name__}: {exc}"
                    ) from exc
                log.info("resource %s ready", resource.name)
            self._started.append(resource)

    async def close(self) -> None:
        """Tear down, in reverse order, what this worker started (and no other worker of the
        process still uses). A teardown that fails is logged; the others still run."""
        while self._started:
            resource = self._started.pop()
            live = _live[resource]
            live.users -= 1
            if live.users:
                continue
            del _live[resource]
            if live.teardown is None:
                continue
            try:
                await live.teardown()
            except Exception:
                log.exception("teardown of resource %s failed", resource.name)


async def _build(resource: Resource[Any]) -> _Live:
    factory = resource.factory
    if inspect.isasyncgenfunction(factory):
        agen: AsyncGenerator[Any, None] = factory()
        value = await anext(agen)
        return _Live(value, lambda: _finish_async(agen, resource))
    if inspect.isgeneratorfunction(factory):
        gen: Generator[Any, None, None] = await asyncio.to_thread(factory)
        value = await asyncio.to_thread(next, gen)
        return _Live(value, lambda: asyncio.to_thread(_finish_sync, gen, resource))
    if inspect.iscoroutinefunction(factory):
        return _Live(await factory(), None)
    return _Live(await asyncio.to_thread(factory), None)


async def _finish_async(agen: AsyncGenerator[Any, None], resource: Resource[Any]) -> None:
    try:
        await anext(agen)
    except StopAsyncIteration:
        return
    await agen.aclose()
    raise ResourceError(f"resource {resource.name!r} yielded more than once")


def _finish_sync(gen: Generator[Any, None, None], resource: Resource[Any]) -> None:
    try:
        next(gen)
    except StopIteration:
        return
    gen.close()
    raise ResourceError(f"resource {resource.name!r} yielded more than once")
