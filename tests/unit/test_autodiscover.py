"""``autodiscover_tasks`` as Celery has it: without packages, or with a callable, the import
waits for ``app.finalize()`` (the worker's, or the first read of ``app.tasks``); a list of
packages or ``force=True`` imports at once. Django's own path runs for real in
tests/integration/test_django_project.py."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celery, _state
from celeriac.errors import ConfigurationError


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable package with apps ``one`` and ``two``, each a ``tasks`` module
    with one shared task, and ``plain`` without one."""
    name = f"proj_{uuid.uuid4().hex[:12]}"
    files = {
        "__init__.py": "",
        "plain/__init__.py": "",
        "one/__init__.py": "",
        "two/__init__.py": "",
        "one/tasks.py": """
            from celeriac import shared_task

            @shared_task
            def ping() -> str:
                return "pong"
            """,
        "two/tasks.py": """
            from celeriac import shared_task

            @shared_task
            def echo(text: str) -> str:
                return text
            """,
    }
    for relative, source in files.items():
        path = tmp_path / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    shared_before = list(_state.apps._shared)
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]
    # Its shared tasks would otherwise join every app later tests make (as in Celery).
    _state.apps._shared[:] = shared_before


@pytest.fixture
def no_django(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process where Django is not configured (as in any non-Django project)."""
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.delitem(sys.modules, "django.conf", raising=False)


def test_without_packages_and_no_django_the_error_comes_at_finalize_naming_the_fix(
    no_django: None,
) -> None:
    app = Celery("proj", broker="memory://")
    assert app.autodiscover_tasks() is None  # proj/celery.py runs before Django is set up
    assert not app.finalized
    with pytest.raises(ConfigurationError, match="DJANGO_SETTINGS_MODULE") as raised:
        app.finalize()
    assert "pass the packages to search: app.autodiscover_tasks(['app1', 'app2'])" in str(
        raised.value
    )
    assert not app.finalized
    with pytest.raises(ConfigurationError, match="INSTALLED_APPS"):
        app.tasks.get("any.task")  # a worker looking a name up finalizes, and is told too


def test_a_callable_is_called_at_finalize_once(project: str) -> None:
    app = Celery("proj", broker="memory://")
    calls: list[str] = []

    def packages() -> list[str]:
        calls.append("called")
        return [f"{project}.one", f"{project}.two", f"{project}.plain"]

    assert app.autodiscover_tasks(packages) is None
    assert calls == [] and f"{project}.one.tasks" not in sys.modules
    app.finalize()
    assert calls == ["called"]
    assert f"{project}.one.tasks.ping" in app.tasks
    assert f"{project}.two.tasks.echo" in app.tasks
    app.finalize()
    assert app.tasks and app.finalized
    assert calls == ["called"]  # finalizing again imports nothing again


def test_reading_the_task_registry_finalizes(project: str) -> None:
    app = Celery("proj", broker="memory://")
    app.autodiscover_tasks(lambda: [f"{project}.one"])
    assert app.tasks[f"{project}.one.tasks.ping"].name == f"{project}.one.tasks.ping"
    assert app.finalized


def test_force_and_a_list_import_at_once(project: str) -> None:
    app = Celery("proj", broker="memory://")
    found = app.autodiscover_tasks(lambda: [f"{project}.one", f"{project}.plain"], force=True)
    assert found == [f"{project}.one.tasks"]
    assert app.autodiscover_tasks([f"{project}.two"]) == [f"{project}.two.tasks"]
    assert f"{project}.two.tasks" in sys.modules
    assert not app.finalized  # nothing was left for finalize


def test_force_without_packages_and_no_django_raises_at_the_call(no_django: None) -> None:
    app = Celery("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="pass the packages"):
        app.autodiscover_tasks(force=True)


def test_after_finalize_a_deferred_discovery_runs_at_once(project: str) -> None:
    app = Celery("proj", broker="memory://")
    app.finalize()
    assert app.autodiscover_tasks(lambda: [f"{project}.one"]) == [f"{project}.one.tasks"]


def test_a_failed_discovery_is_tried_again_at_the_next_finalize(project: str) -> None:
    app = Celery("proj", broker="memory://")
    attempts: list[int] = []

    def packages() -> list[str]:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise LookupError("settings not ready")
        return [f"{project}.one"]

    app.autodiscover_tasks(packages)
    with pytest.raises(LookupError):
        app.finalize()
    app.finalize()
    assert attempts == [0, 1]
    assert f"{project}.one.tasks.ping" in app.tasks


def test_a_tasks_module_reading_the_registry_while_imported_starts_no_second_round(
    project: str, tmp_path: Path
) -> None:
    (tmp_path / project / "reader").mkdir()
    (tmp_path / project / "reader" / "__init__.py").write_text("")
    (tmp_path / project / "reader" / "tasks.py").write_text(
        "from celeriac import current_app\n\nSEEN = sorted(current_app.tasks)\n"
    )
    app = Celery("proj", broker="memory://")
    calls: list[str] = []

    def packages() -> list[str]:
        calls.append("called")
        return [f"{project}.one", f"{project}.reader", f"{project}.two"]

    app.autodiscover_tasks(packages)
    app.finalize()
    assert calls == ["called"]
    seen = sys.modules[f"{project}.reader.tasks"].SEEN
    assert f"{project}.one.tasks.ping" in seen  # what was registered so far
    assert f"{project}.two.tasks.echo" in app.tasks
