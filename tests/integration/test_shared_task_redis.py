"""A ``@shared_task`` defined before a Redis-configured app is sent to that app's Redis and
run by its worker (it used to go to a hidden default app on ``sqlite:///celeriac.db``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celery, shared_task
from inprocess import run_worker
from services import REDIS_DB_BROKER, REDIS_DB_RESULTS, delete_prefixed, redis_url, require_redis


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    prefix = f"test-shared-{uuid.uuid4().hex}:"
    yield prefix
    delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)


async def test_shared_task_defined_before_a_redis_app_is_run_by_its_worker(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a hidden default app would make ./celeriac.db here
    name = f"shared.multiply.{uuid.uuid4().hex}"

    @shared_task(name=name)
    def multiply(x: int, y: int) -> int:
        return x * y

    app = Celery(
        "proj",
        broker=redis_url(REDIS_DB_BROKER),
        backend=redis_url(REDIS_DB_RESULTS),
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        task_default_queue=f"shared-{uuid.uuid4().hex}",
    )

    async def work() -> int:
        result = await multiply.delay(6, 7)
        value: int = await result.get(timeout=15)
        return value

    assert await run_worker(app, work) == 42
    assert not (tmp_path / "celeriac.db").exists()
