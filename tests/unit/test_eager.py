"""``Task.apply`` and the ``task_always_eager`` / ``task_eager_propagates`` settings: tasks run
in the caller, as Celery users run them in tests, with no broker and no store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.result import EagerResult


def app_without_services(tmp_path: Path, **settings: Any) -> Celery:
    """An app whose broker and store cannot be reached: an eager run must touch neither."""
    return Celery(
        "eager",
        broker=f"sqlite:///{tmp_path}/missing/dir/broker.db",
        backend=f"sqlite:///{tmp_path}/missing/dir/results.db",
        **settings,
    )


def test_apply_runs_a_sync_task_and_returns_an_eager_result(tmp_path: Path) -> None:
    app = app_without_services(tmp_path)

    @app.task(bind=True)
    def whoami(self: Any, x: int) -> tuple[str, int, bool]:
        return self.request.id, x, self.request.is_eager

    result = whoami.apply((5,), task_id="fixed-id")
    assert isinstance(result, EagerResult)
    assert result.id == "fixed-id"
    assert result.get() == ("fixed-id", 5, True)
    assert result.wait() == ("fixed-id", 5, True)
    assert result.state == states.SUCCESS and result.result == ("fixed-id", 5, True)
    assert result.successful() is True and result.failed() is False and result.ready() is True
    assert result.traceback is None
    assert not (tmp_path / "missing").exists()


def test_a_failure_is_the_results_state_and_get_raises_it(tmp_path: Path) -> None:
    app = app_without_services(tmp_path)

    @app.task
    def boom() -> None:
        raise KeyError("nope")

    result = boom.apply()
    assert result.state == states.FAILURE and result.failed() is True
    assert isinstance(result.result, KeyError)
    assert result.traceback is not None and "KeyError: 'nope'" in result.traceback
    assert "in boom" in result.traceback
    with pytest.raises(KeyError, match="nope"):
        result.get()
    assert isinstance(result.get(propagate=False), KeyError)


def test_eager_propagates_raises_from_apply_and_delay(tmp_path: Path) -> None:
    app = app_without_services(tmp_path, task_always_eager=True, task_eager_propagates=True)

    @app.task
    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        boom.apply()
    with pytest.raises(ValueError, match="bad"):
        boom.delay()
    assert boom.apply(throw=False).failed() is True


def test_always_eager_runs_delay_apply_async_and_apply_many_in_the_caller(tmp_path: Path) -> None:
    app = app_without_services(tmp_path)
    app.conf.update(CELERY_ALWAYS_EAGER=True)  # Celery's old name is read too

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(2, 3).get() == 5
    assert add.apply_async((4, 5), countdown=10, task_id="t1").get() == 9
    results = add.delay_many([(1, 1), {"x": 2, "y": 2}])
    assert [r.get() for r in results] == [2, 4]  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="'link'"):
        add.apply_async((1, 2), link="callback")  # type: ignore[call-arg]
    assert not (tmp_path / "missing").exists()


def test_retry_and_autoretry_run_again_at_once_until_max_retries(tmp_path: Path) -> None:
    app = app_without_services(tmp_path)
    tries: list[int] = []

    @app.task(bind=True, max_retries=5)
    def flaky(self: Any) -> int:
        tries.append(self.request.retries)
        if len(tries) < 3:
            raise self.retry(countdown=60)
        return len(tries)

    assert flaky.apply().get() == 3
    assert tries == [0, 1, 2]

    @app.task(autoretry_for=(OSError,), max_retries=2)
    def down() -> None:
        tries.append(-1)
        raise OSError("down")

    tries.clear()
    result = down.apply()
    assert result.failed() is True and isinstance(result.result, OSError)
    assert tries == [-1, -1, -1]  # the first run and two retries


def test_an_async_task_applied_from_sync_code_runs_to_its_end(tmp_path: Path) -> None:
    app = app_without_services(tmp_path)

    @app.task
    async def later(x: int) -> int:
        await asyncio.sleep(0)
        return x * 10

    @app.task
    async def progress(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @app.task
    def counting(n: int) -> Iterator[int]:
        yield from range(n)

    assert later.apply((4,)).get() == 40
    assert progress.apply((3,)).get() == 2  # the last value yielded, as the worker stores
    assert counting.apply((5,)).get() == 4


async def test_an_async_task_applied_from_async_code_is_awaited(tmp_path: Path) -> None:
    app = app_without_services(tmp_path, task_always_eager=True)
    release = asyncio.Event()

    @app.task
    async def waits(x: int) -> int:
        await release.wait()
        return x + 1

    @app.task
    async def fails() -> None:
        raise RuntimeError("async boom")

    result = waits.delay(1)
    assert result.state == states.STARTED  # running as a task of this loop, not finished
    assert await result.ready() is False
    release.set()
    assert await result.get(timeout=5) == 2
    assert result.state == states.SUCCESS and await result.successful() is True

    failed = await fails.delay()
    assert await failed.failed() is True
    with pytest.raises(RuntimeError, match="async boom"):
        await failed.get()
    assert isinstance(await failed.get(propagate=False), RuntimeError)


async def test_update_state_in_an_eager_run_touches_no_store(tmp_path: Path) -> None:
    app = app_without_services(tmp_path)

    @app.task(bind=True)
    async def reports(self: Any) -> str:
        await self.update_state(state="PROGRESS", meta={"done": 1})
        return "ok"

    assert await reports.apply().get(timeout=5) == "ok"
    assert not (tmp_path / "missing").exists()
