"""A minimal ASGI app for the concurrency test: endpoints that await a result or stream one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from celeriac import Celery
from celeriac.web import sse_response

celery = Celery("concurrency")


@celery.task
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@celery.task
async def ticks(n: int, gap: float) -> AsyncIterator[int]:
    for i in range(n):
        yield i
        await asyncio.sleep(gap)


async def wait(request: Request) -> Response:
    result = await nap.delay(float(request.query_params["s"]))
    return JSONResponse(await result.get(timeout=120))


async def stream(request: Request) -> Response:
    return sse_response(await ticks.delay(3, 0.2), timeout=120)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    async with celery.setup():
        yield


app = Starlette(
    routes=[Route("/wait", wait), Route("/stream", stream), Route("/health", health)],
    lifespan=lifespan,
)
