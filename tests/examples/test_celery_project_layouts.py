"""A Celery project laid out as Django users lay it out (``proj/celery.py``, settings with
``CELERY_`` names, tasks in each app's ``tasks.py``), wired with ``config_from_object`` and
``autodiscover_tasks``, and a discovered task run by a worker on the embedded SQLite broker."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inprocess import run_worker

SETTINGS = """
import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = True
SECRET_KEY = "django-insecure"
INSTALLED_APPS = ["django.contrib.admin", "{pkg}.app1", "{pkg}.app2"]
CELERY_BROKER_URL = "sqlite:///" + os.path.join(BASE_DIR, "broker.db")
CELERY_TASK_SERIALIZER = "json"
CELERY_WORKER_CONCURRENCY = 4
CELERY_TASK_DEFAULT_QUEUE = "{pkg}"
"""

CELERYCONFIG = """
task_default_queue = "{pkg}-celeryconfig"
CELERYD_PREFETCH_MULTIPLIER = 2
"""

CELERY_MODULE = """
from celeriac import Celery

app = Celery("{pkg}")
app.config_from_object("{pkg}.settings", namespace="CELERY")
"""

APP_TASKS = """
from {pkg}.celery import app


@app.task
def add(x: int, y: int) -> int:
    return x + y
"""

APP2_TASKS = """
from {pkg}.celery import app


@app.task
async def shout(text: str) -> str:
    return text.upper()
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Django-style project package written into tmp_path; its name is unique."""
    pkg = f"proj_{uuid.uuid4().hex[:12]}"
    files = {
        "__init__.py": "",
        "settings.py": SETTINGS,
        "celeryconfig.py": CELERYCONFIG,
        "celery.py": CELERY_MODULE,
        "app1/__init__.py": "",
        "app1/tasks.py": APP_TASKS,
        "app2/__init__.py": "",
        "app2/tasks.py": APP2_TASKS,
        "app3/__init__.py": "",  # an app without tasks
    }
    for relative, source in files.items():
        path = tmp_path / pkg / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).replace("{pkg}", pkg))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)
    yield pkg
    for module in [m for m in sys.modules if m == pkg or m.startswith(f"{pkg}.")]:
        del sys.modules[module]


async def test_a_django_style_project_runs_its_discovered_tasks(
    project: str, tmp_path: Path
) -> None:
    app = importlib.import_module(f"{project}.celery").app
    assert app.conf.broker_url == f"sqlite:///{tmp_path / 'broker.db'}"
    assert app.conf.worker_concurrency == 4
    found = app.autodiscover_tasks([f"{project}.app1", f"{project}.app2", f"{project}.app3"])
    assert found == [f"{project}.app1.tasks", f"{project}.app2.tasks"]
    add = app.tasks[f"{project}.app1.tasks.add"]
    shout = app.tasks[f"{project}.app2.tasks.shout"]

    async def work() -> list[Any]:
        sums = await add.delay(2, 3)
        shouted = await shout.delay("hello")
        return [await sums.get(timeout=30), await shouted.get(timeout=30)]

    assert await run_worker(app, work) == [5, "HELLO"]
    assert (tmp_path / "broker.db").exists()  # the embedded broker named in settings.py


def test_a_celeryconfig_module_with_old_names(project: str) -> None:
    app = importlib.import_module(f"{project}.celery").app
    app.config_from_object(f"{project}.celeryconfig")
    assert app.conf.task_default_queue == f"{project}-celeryconfig"
    assert app.conf.worker_prefetch_multiplier == 2
    assert app.conf.worker_concurrency == 4  # from settings.py, still in force
