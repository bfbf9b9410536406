"""Celery project wiring: ``config_from_object``, old upper-case and Django names,
``conf.update`` with foreign keys (a Flask config), near-misses and wrong types."""

from __future__ import annotations

import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import flask
import pytest

from celeriac import Celery
from celeriac.errors import ConfigurationError


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, importable package name (a project written into tmp_path)."""
    name = f"proj_{uuid.uuid4().hex[:12]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


def test_a_flask_config_with_foreign_keys_updates_the_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    web = flask.Flask(__name__)
    web.config.update(
        SECRET_KEY="s3cret",
        CELERY_BROKER_URL="memory://flask",
        CELERY_RESULT_BACKEND="memory://flask-results",
        SQLALCHEMY_DATABASE_URI="sqlite://",
    )
    app = Celery("flaskproj")
    with caplog.at_level(logging.WARNING, logger="celeriac.config"):
        app.conf.update(web.config)
    assert app.conf.broker_url == "memory://flask"
    assert app.conf.result_backend == "memory://flask-results"
    assert app.conf["SECRET_KEY"] == "s3cret"  # kept, as Celery keeps it
    assert app.conf.get("DEBUG") is False
    assert app.conf.get("NOT_THERE", "fallback") == "fallback"
    assert caplog.records == []  # Flask's own keys are none of celeriac's business
    app.conf.update({1: "a key that is not even a string"})
    assert app.conf.get(1) == "a key that is not even a string"  # type: ignore[arg-type]


def test_a_celery_looking_name_celeriac_does_not_read_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Celery("t", broker="memory://")
    with caplog.at_level(logging.WARNING, logger="celeriac.config"):
        app.conf.update(task_routes={"a.*": {"queue": "a"}})
    assert app.conf["task_routes"] == {"a.*": {"queue": "a"}}
    assert [r.getMessage() for r in caplog.records] == [
        "Celery's setting 'task_routes' is not one celeriac reads and is ignored"
        " (docs/configuration.md lists the settings)"
    ]


def test_a_near_miss_is_still_an_error_with_its_suggestion() -> None:
    app = Celery("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'"):
        app.conf.update({"SECRET_KEY": "x", "task_acks_lat": False})
    with pytest.raises(ConfigurationError, match="did you mean 'CELERYD_CONCURRENCY'"):
        app.conf.update(CELERYD_CONCURENCY=4)
    assert app.conf.task_acks_late is True
    assert app.conf.get("SECRET_KEY") is None  # nothing of a refused update is kept


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "task_acks_late",
            "yes please",
            "setting 'task_acks_late' must be a bool (True or False), not str 'yes please'",
        ),
        ("worker_concurrency", "4", "setting 'worker_concurrency' must be an int, not str '4'"),
        (
            "CELERYD_CONCURRENCY",
            4.5,
            "setting 'worker_concurrency' must be an int, not float 4.5",
        ),
        (
            "result_expires",
            "1h",
            "setting 'result_expires' must be a number of seconds or None, not str '1h'",
        ),
        (
            "accept_content",
            "json",
            "setting 'accept_content' must be a list of str, not str 'json'",
        ),
        ("broker_url", 6379, "setting 'broker_url' must be a str or None, not int 6379"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_setting_and_the_type(
    name: str, value: object, message: str
) -> None:
    app = Celery("t", broker="memory://")
    with pytest.raises(ConfigurationError) as raised:
        app.conf.update({"task_default_queue": "changed", name: value})
    assert str(raised.value) == message
    assert app.conf.task_default_queue == "celery"  # every value is checked before any is set
    with pytest.raises(ConfigurationError, match="must be"):
        app.conf[name] = value
    with pytest.raises(ConfigurationError, match="must be"):
        Celery("t", **{name: value})


def test_values_convert_as_celery_takes_them() -> None:
    from datetime import timedelta

    app = Celery("t", broker="memory://", result_expires=timedelta(minutes=5))
    app.conf.accept_content = ("json", "msgpack")  # type: ignore[assignment]
    assert app.conf.result_expires == 300.0
    assert app.conf.accept_content == ["json", "msgpack"]


def test_old_upper_case_names_set_the_settings_they_stand_for() -> None:
    app = Celery("t")
    app.conf.update(
        BROKER_URL="memory://old",
        CELERY_RESULT_BACKEND="memory://old-results",
        CELERY_TASK_SERIALIZER="msgpack",
        CELERYD_CONCURRENCY=8,
        CELERYD_PREFETCH_MULTIPLIER=2,
        CELERY_ACKS_LATE=False,
        CELERY_TASK_RESULT_EXPIRES=60,
        CELERY_DEFAULT_QUEUE="old",
    )
    conf = app.conf
    assert (conf.broker_url, conf.result_backend) == ("memory://old", "memory://old-results")
    assert (conf.task_serializer, conf.worker_concurrency) == ("msgpack", 8)
    assert (conf.worker_prefetch_multiplier, conf.task_acks_late) == (2, False)
    assert (conf.result_expires, conf.task_default_queue) == (60, "old")
    assert conf["CELERYD_CONCURRENCY"] == 8


def test_config_from_a_celeryconfig_module(tmp_path: Path, package: str) -> None:
    write(
        tmp_path,
        f"{package}/celeryconfig.py",
        """
        import os
        from datetime import timedelta

        broker_url = "memory://celeryconfig"
        task_serializer = "msgpack"
        result_expires = timedelta(minutes=10)
        worker_concurrency = 12
        _private = "not read"


        def helper() -> str:
            return os.sep


        class Config:
            task_default_queue = "from-class"
            CELERYD_PREFETCH_MULTIPLIER = 3
        """,
    )
    app = Celery("proj")
    app.config_from_object(f"{package}.celeryconfig")
    assert app.conf.broker_url == "memory://celeryconfig"
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.result_expires == 600.0
    assert app.conf.worker_concurrency == 12
    assert app.conf.get("_private") is None
    app.config_from_object(f"{package}.celeryconfig:Config")
    assert app.conf.task_default_queue == "from-class"
    app.config_from_object(f"{package}.celeryconfig.Config")
    assert app.conf.worker_prefetch_multiplier == 3


def test_config_from_django_settings_with_the_celery_namespace(
    tmp_path: Path, package: str
) -> None:
    write(
        tmp_path,
        f"{package}/settings.py",
        """
        DEBUG = True
        SECRET_KEY = "django-insecure"
        INSTALLED_APPS = ["django.contrib.admin", "proj.app1"]
        BROKER_URL = "memory://not-in-the-namespace"
        CELERY_BROKER_URL = "memory://django"
        CELERY_RESULT_BACKEND = "memory://django-results"
        CELERY_TASK_ACKS_LATE = False
        CELERY_WORKER_CONCURRENCY = 7
        CELERY_TASK_DEFAULT_QUEUE = "django"
        """,
    )
    app = Celery("proj")
    app.config_from_object(f"{package}.settings", namespace="CELERY")
    assert app.conf.broker_url == "memory://django"
    assert app.conf.result_backend == "memory://django-results"
    assert app.conf.task_acks_late is False
    assert app.conf.worker_concurrency == 7
    assert app.conf.task_default_queue == "django"
    assert app.conf.get("SECRET_KEY") is None  # outside the namespace: not read at all


def test_a_near_miss_or_a_wrong_type_in_a_config_module_is_an_error(
    tmp_path: Path, package: str
) -> None:
    write(tmp_path, f"{package}/typo.py", "CELERY_TASK_ACKS_LAT = False\n")
    write(tmp_path, f"{package}/wrongtype.py", "CELERY_TASK_ACKS_LATE = 'yes please'\n")
    app = Celery("proj", broker="memory://")
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'"):
        app.config_from_object(f"{package}.typo", namespace="CELERY")
    with pytest.raises(ConfigurationError, match="'task_acks_late' must be a bool"):
        app.config_from_object(f"{package}.wrongtype", namespace="CELERY")


def test_a_config_module_that_does_not_exist(package: str) -> None:
    app = Celery("proj", broker="memory://")
    with pytest.raises(ModuleNotFoundError):
        app.config_from_object(f"{package}.nowhere")
    app.config_from_object(f"{package}.nowhere", silent=True)
    assert app.conf.broker_url == "memory://"


def test_config_from_an_object_or_a_mapping() -> None:
    class Config:
        broker_url = "memory://object"
        CELERYD_CONCURRENCY = 5

    app = Celery("proj")
    app.config_from_object(Config)
    assert (app.conf.broker_url, app.conf.worker_concurrency) == ("memory://object", 5)
    app.config_from_object({"CELERY_TASK_SERIALIZER": "pickle"}, namespace="CELERY")
    assert app.conf.task_serializer == "pickle"


def test_autodiscover_tasks_imports_each_packages_tasks_module(
    tmp_path: Path, package: str
) -> None:
    write(
        tmp_path,
        f"{package}/celery.py",
        """
        from celeriac import Celery

        app = Celery("proj", broker="memory://autodiscover")
        """,
    )
    for app_name in ("app1", "app2"):
        write(tmp_path, f"{package}/{app_name}/__init__.py", "")
        write(
            tmp_path,
            f"{package}/{app_name}/tasks.py",
            f"""
            from {package}.celery import app


            @app.task
            def hello_{app_name}(name: str) -> str:
                return "{app_name} says hello to " + name
            """,
        )
    write(tmp_path, f"{package}/no_tasks/__init__.py", "")
    write(tmp_path, f"{package}/broken/__init__.py", "")
    write(tmp_path, f"{package}/broken/tasks.py", "import not_a_module_anywhere_abc\n")
    import importlib

    app = importlib.import_module(f"{package}.celery").app
    found = app.autodiscover_tasks([f"{package}.app1", f"{package}.app2", f"{package}.no_tasks"])
    assert found == [f"{package}.app1.tasks", f"{package}.app2.tasks"]
    assert f"{package}.app1.tasks.hello_app1" in app.tasks
    assert f"{package}.app2.tasks.hello_app2" in app.tasks
    with pytest.raises(ModuleNotFoundError, match="not_a_module_anywhere_abc"):
        app.autodiscover_tasks(lambda: [f"{package}.broken"])
