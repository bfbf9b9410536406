"""``@shared_task`` and ``current_app`` resolve the current app when used, as in Celery, and
with no app at all they are an error, never a send to a hidden default broker."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from celeriac import AsyncResult, Celery, _state, current_app, shared_task
from celeriac.errors import ConfigurationError
from inprocess import memory_app, run_worker


@pytest.fixture
def no_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process as it is before any app is created (other tests made apps already)."""
    monkeypatch.setattr(_state, "apps", _state.Apps())


@pytest.mark.usefixtures("no_apps")
def test_shared_task_called_before_any_app_is_an_error_that_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    @shared_task(name=f"shared.early.{uuid.uuid4().hex}")
    def early(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="create the app") as raised:
        early.delay(1)
    assert "no Celery app is configured" in str(raised.value)
    assert early(7) == 7  # an inline call needs no app
    with pytest.raises(ConfigurationError, match="pass app="):
        AsyncResult("some-id")
    with pytest.raises(ConfigurationError):
        current_app.conf  # noqa: B018 - the attribute read is what raises
    assert not (tmp_path / "celeriac.db").exists()  # nothing went to a hidden default app


@pytest.mark.usefixtures("no_apps")
async def test_shared_task_defined_before_the_app_is_run_by_that_apps_worker() -> None:
    name = f"shared.add.{uuid.uuid4().hex}"

    @shared_task(name=name)
    async def add(x: int, y: int) -> int:
        return x + y

    app = memory_app("later")
    assert name in app.tasks and app.tasks[name] is not add
    assert add.app is app

    async def work() -> int:
        result = await add.delay(2, 3)
        assert result.app is app
        value: int = await result.get(timeout=10)
        return value

    assert await run_worker(app, work) == 5


@pytest.mark.usefixtures("no_apps")
def test_current_app_follows_set_current_set_default_and_the_latest_app() -> None:
    first = memory_app("first")
    assert current_app._get_current_object() is first  # type: ignore[attr-defined]
    second = memory_app("second")
    assert current_app.main == "second"
    quiet = Celery("quiet", broker="memory://quiet", set_as_current=False)
    assert current_app._get_current_object() is second  # type: ignore[attr-defined]
    first.set_current()
    assert current_app._get_current_object() is first  # type: ignore[attr-defined]

    seen: list[Celery] = []
    other = threading.Thread(target=lambda: seen.append(current_app._get_current_object()))  # type: ignore[attr-defined]
    other.start()
    other.join(10)
    assert seen == [first]  # a thread with no current app of its own: the latest one
    quiet.set_default()
    other = threading.Thread(target=lambda: seen.append(current_app._get_current_object()))  # type: ignore[attr-defined]
    other.start()
    other.join(10)
    assert seen[-1] is quiet  # the default wins in a thread with no current app
    assert current_app._get_current_object() is first  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_apps")
def test_shared_task_is_registered_on_apps_made_before_and_after_it() -> None:
    before = memory_app("before")
    name = f"shared.ping.{uuid.uuid4().hex}"

    @shared_task(name=name, max_retries=7)
    def ping() -> str:
        return "pong"

    after = memory_app("after")
    assert before.tasks[name].app is before and after.tasks[name].app is after
    assert before.tasks[name].max_retries == 7
    assert ping.app is after  # the latest app is current
    before.set_current()
    assert ping.app is before


async def test_wait_is_get() -> None:
    app = memory_app("wait")

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    async def work() -> int:
        value: int = await (await double.delay(4)).wait(timeout=10)
        return value

    assert await run_worker(app, work) == 8
