"""The web side: FastAPI endpoints that hand work to the pools and stream their progress.

    celeriac run examples.fastapi_app.main:api          # web server + every pool, one command

Endpoints that start streaming tasks answer with Server-Sent Events (``text/event-stream``);
the others return the task's result, awaited without blocking the server. ``/docs`` is
FastAPI's own interactive documentation.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from examples.fastapi_app import tasks
from examples.fastapi_app.tasks import app as celery_app
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response

from celeriac.web import sse_response


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with celery_app.setup():  # connect on the server's loop, close on shutdown
        yield


api = FastAPI(
    title="celeriac example", description="Slow work in celeriac worker pools.", lifespan=lifespan
)
TIMEOUT = float(os.environ.get("EXAMPLE_TIMEOUT", "60"))


class Email(BaseModel):
    to: str
    subject: str
    body: str


class BulkEmail(BaseModel):
    recipients: list[str]
    subject: str
    body: str


class Resize(BaseModel):
    path: str
    width: int
    height: int


class Batch(BaseModel):
    paths: list[str]
    width: int


class Values(BaseModel):
    values: list[float]


class Rows(BaseModel):
    rows: list[dict[str, Any]]


class Cleanup(BaseModel):
    directory: str
    max_age_seconds: float


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.post("/api/email/send")
async def send_email(email: Email) -> Any:
    result = await tasks.send_email.delay(email.to, email.subject, email.body)
    return await result.get(timeout=TIMEOUT)


@api.post("/api/email/send-bulk")
async def send_bulk(email: BulkEmail) -> Response:
    result = await tasks.send_bulk_emails.delay(email.recipients, email.subject, email.body)
    return sse_response(result, timeout=TIMEOUT)


@api.post("/api/image/resize")
async def resize(request: Resize) -> Any:
    result = await tasks.resize.delay(request.path, request.width, request.height)
    return await result.get(timeout=TIMEOUT)


@api.post("/api/image/process-batch")
async def process_batch(batch: Batch) -> Response:
    result = await tasks.process_batch.delay(batch.paths, batch.width)
    return sse_response(result, timeout=TIMEOUT)


@api.post("/api/data/aggregate")
async def aggregate(values: Values) -> Any:
    return await (await tasks.aggregate.delay(values.values)).get(timeout=TIMEOUT)


@api.post("/api/data/etl")
async def etl(rows: Rows) -> Response:
    return sse_response(await tasks.etl_pipeline.delay(rows.rows), timeout=TIMEOUT)


@api.get("/api/data/query")
async def query(region: str) -> Any:
    return await (await tasks.cached_query.delay(region)).get(timeout=TIMEOUT)


@api.post("/api/scheduled/cleanup")
async def cleanup(request: Cleanup) -> Any:
    result = await tasks.cleanup_old_files.delay(request.directory, request.max_age_seconds)
    return await result.get(timeout=TIMEOUT)


@api.post("/api/scheduled/daily-report")
async def daily_report() -> Any:
    return await (await tasks.generate_daily_report.delay()).get(timeout=TIMEOUT)
