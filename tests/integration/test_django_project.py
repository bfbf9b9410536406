"""A Django project wired as Celery's docs teach it runs unchanged on celeriac but for the
import: ``proj/celery.py`` reads ``CELERY_*`` settings from ``django.conf:settings`` and calls
``autodiscover_tasks()`` without packages; ``celeriac -A proj worker`` (one process, or a
pool's child processes) finds ``shop/tasks.py`` through ``INSTALLED_APPS`` and runs the
``@shared_task`` a client sends from a ``manage.py shell``-like script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services import REDIS_DB_BROKER, REDIS_DB_RESULTS, delete_prefixed, redis_url, require_redis

from .conftest import READY
from .supervised import Supervised

pytestmark = pytest.mark.integration

CELERY_PY = """
    import os

    from celeriac import Celery

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
"""

#: ``shop/tasks.py`` imports a model: it can only be imported once Django is set up.
SHOP_TASKS = """
    import os
    import time
    from pathlib import Path

    from celeriac import shared_task

    from shop.models import Product


    @shared_task
    def price(quantity: int, unit: int) -> str:
        return f"{quantity * unit} for {Product._meta.label}"


    @shared_task
    def meet(count: int, where: str) -> int:
        \"\"\"Mark this process's pid in ``where``, wait (20 s at most) until ``count``
        processes have, and return the pid: ``count`` of these at once, one a process, end.\"\"\"
        Path(where, str(os.getpid())).touch()
        deadline = time.monotonic() + 20
        while len(os.listdir(where)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid()
"""

SHOP_MODELS = """
    from django.db import models


    class Product(models.Model):
        name = models.CharField(max_length=100)
"""

#: What ``python manage.py shell`` would run: Django set up, the task imported and sent.
CLIENT = """
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

    import django

    django.setup()

    import sys

    from shop.tasks import meet, price

    if sys.argv[1:2] == ["meet"]:
        count, where = int(sys.argv[2]), sys.argv[3]
        sent = [meet.delay(count, where) for _ in range(count)]
        print("pids:", *sorted(result.get(timeout=30) for result in sent))
    else:
        print("result:", price.delay(2, 3).get(timeout=30))
"""


def write_project(root: Path, celery_settings: dict[str, object]) -> None:
    settings = [
        'SECRET_KEY = "not-secret"',
        'INSTALLED_APPS = ["django.contrib.contenttypes", "shop"]',
        *(f"{name} = {value!r}" for name, value in celery_settings.items()),
    ]
    files = {
        "proj/__init__.py": "from .celery import app as celery_app\n\n__all__ = ('celery_app',)\n",
        "proj/settings.py": "\n".join(settings) + "\n",
        "proj/celery.py": CELERY_PY,
        "shop/__init__.py": "",
        "shop/models.py": SHOP_MODELS,
        "shop/tasks.py": SHOP_TASKS,
        "client.py": CLIENT,
    }
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


@pytest.fixture(params=["sqlite", "redis"])
def celery_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, object]]:
    """The project's ``CELERY_*`` settings: an SQLite file in tmp_path, or Redis under a key
    prefix and queue of this test's own (its keys deleted afterwards)."""
    if request.param == "sqlite":
        yield {"CELERY_BROKER_URL": f"sqlite:///{tmp_path / 'broker.db'}"}
        return
    require_redis()
    prefix = f"test-django-{uuid.uuid4().hex}:"
    yield {
        "CELERY_BROKER_URL": redis_url(REDIS_DB_BROKER),
        "CELERY_RESULT_BACKEND": redis_url(REDIS_DB_RESULTS),
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"global_keyprefix": prefix},
        "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": {"global_keyprefix": prefix},
        "CELERY_TASK_DEFAULT_QUEUE": f"django-{uuid.uuid4().hex}",
    }
    delete_prefixed(prefix, REDIS_DB_BROKER, REDIS_DB_RESULTS)


@pytest.fixture
def project_env(tmp_path: Path, celery_settings: dict[str, object]) -> dict[str, str]:
    """The project written into tmp_path, and an environment in which only its settings
    choose the broker: nothing of the test run's own (``CELERIAC_*``, Django) leaks in."""
    write_project(tmp_path, celery_settings)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CELERIAC_", "DJANGO_")) and name != "PYTHONPATH"
    }
    return env


@pytest.fixture
def start_worker(
    tmp_path: Path, project_env: dict[str, str]
) -> Iterator[Callable[..., Supervised]]:
    """``celeriac -A proj worker *args`` run from the project's directory."""
    started: list[Supervised] = []

    def start(*args: str) -> Supervised:
        argv = [sys.executable, "-m", "celeriac.cli", "-A", "proj", "worker", "-l", "info"]
        worker = Supervised([*argv, *args], project_env, tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGINT)  # twice: at once
            worker.stop(signal.SIGINT)
        worker.close()


def send_from_client(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "client.py", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_the_worker_finds_the_task_through_installed_apps(
    tmp_path: Path, project_env: dict[str, str], start_worker: Callable[..., Supervised]
) -> None:
    worker = start_worker()
    worker.wait_for(READY)
    assert send_from_client(tmp_path, project_env) == "result: 6 for shop.Product"


def test_each_process_of_a_pool_finds_the_task(
    tmp_path: Path, project_env: dict[str, str], start_worker: Callable[..., Supervised]
) -> None:
    # One task at a time each, none reserved ahead: two tasks that wait for each other
    # end only if both processes run one.
    supervisor = start_worker("-P", "2", "-c", "1", "--prefetch-multiplier", "1")
    children = supervisor.pids_ready(2)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    pids = send_from_client(tmp_path, project_env, "meet", "2", str(meeting))
    assert pids == "pids: " + " ".join(map(str, sorted(children)))
    assert "unregistered" not in supervisor.log()


@pytest.mark.parametrize("celery_settings", ["sqlite"], indirect=True)
def test_a_broken_tasks_module_stops_the_worker_before_it_consumes(
    tmp_path: Path, start_worker: Callable[..., Supervised]
) -> None:
    (tmp_path / "shop" / "tasks.py").write_text("raise RuntimeError('shop tasks are broken')\n")
    worker = start_worker()
    assert worker.proc.wait(timeout=30) != 0
    worker.wait_for("RuntimeError: shop tasks are broken")
    assert READY not in worker.log()
