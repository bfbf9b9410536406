from __future__ import annotations

import logging

import pytest

from celeriac import Celery
from celeriac.config import DEFAULT_BROKER_URL
from celeriac.errors import ConfigurationError


def test_unknown_setting_names_the_closest_known_one() -> None:
    app = Celery("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'"):
        app.conf.update(task_ack_late=True)
    with pytest.raises(ConfigurationError, match="did you mean 'result_expires'"):
        app.conf.result_expire = 5
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Celery("t", worker_concurency=4)


def test_update_checks_every_name_before_setting_any() -> None:
    app = Celery("t", broker="memory://")
    with pytest.raises(ConfigurationError):
        app.conf.update(result_expires=5, task_acks_lat=True)
    assert app.conf.result_expires == 86400.0


def test_settings_read_and_write_like_celery() -> None:
    app = Celery("t", broker="memory://", task_default_queue="q1")
    app.conf.update({"worker_prefetch_multiplier": 2}, result_expires=60)
    app.conf["task_serializer"] = "msgpack"
    assert app.conf["task_default_queue"] == "q1"
    assert app.conf.worker_prefetch_multiplier == 2
    assert app.conf.result_expires == 60
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.task_acks_late is True  # celeriac's default: at-least-once


def test_environment_overrides_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)
    app = Celery("t")
    assert app.conf.effective_broker_url() == DEFAULT_BROKER_URL
    assert app.conf.effective_result_backend() == DEFAULT_BROKER_URL
    monkeypatch.setenv("CELERIAC_BROKER_URL", "sqlite:///other.db")
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", "memory://")
    assert app.conf.effective_broker_url() == "sqlite:///other.db"
    assert app.conf.effective_result_backend() == "memory://"


def test_results_default_to_the_brokers_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)
    app = Celery("t", broker="redis://h:6379/3")
    assert app.conf.effective_result_backend() == "redis://h:6379/3"
    app.conf.result_backend = "sqlite:///r.db"
    assert app.conf.effective_result_backend() == "sqlite:///r.db"


def test_rabbitmq_without_a_result_backend_stores_no_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As Celery with no result backend: no store, rather than a local file nobody chose."""
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND", raising=False)
    app = Celery("t", broker="amqp://guest:guest@localhost//")
    assert app.conf.effective_result_backend() == "disabled://"
    app.conf.result_backend = "disabled"  # Celery's name for it
    assert app.conf.effective_result_backend() == "disabled://"
    app.conf.result_backend = "rpc://"
    assert app.conf.effective_result_backend() == "rpc://"


async def test_asking_for_a_result_that_is_not_stored_names_the_fix() -> None:
    from celeriac.errors import ResultsNotStored
    from celeriac.transports import backend_from_url

    backend = backend_from_url("disabled://", options={}, broker_url="amqp://u:secret@h//")
    meta = {"status": "SUCCESS", "result": 5, "task_id": "t1"}
    await backend.store("t1", meta, expires=None)  # dropped
    await backend.store_event("t1", {**meta, "status": "PROGRESS"}, expires=None)
    fix = r"no result backend is configured and the broker amqp://u:\*\*\*@h// keeps no"
    with pytest.raises(ResultsNotStored, match=fix):
        await backend.get("t1")
    with pytest.raises(ResultsNotStored, match="rpc://"):
        await backend.wait("t1", 1.0)
    with pytest.raises(NotImplementedError):  # what Celery raises there
        async for _ in backend.stream("t1", 1.0):
            pass
    assert backend.describe() == "not stored (no result_backend is set)"


def test_unknown_redis_option_names_the_known_ones() -> None:
    from celeriac.transports import broker_from_url

    with pytest.raises(ConfigurationError, match=r"'visibilty_timeout'.*visibility_timeout"):
        broker_from_url("redis://h/0", max_message_size=0, options={"visibilty_timeout": 10})


def test_unsupported_url_scheme_is_a_clear_error() -> None:
    from celeriac.transports import broker_from_url

    with pytest.raises(ConfigurationError, match="unsupported broker URL 'kafka://x'"):
        broker_from_url("kafka://x", max_message_size=0, options={})


def test_a_kept_foreign_key_reads_as_an_attribute_too() -> None:
    app = Celery("t", broker="memory://", set_as_current=False)
    app.conf.update({"SECRET_KEY": "s3cret", "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert app.conf.SECRET_KEY == "s3cret"  # as Celery's conf reads a Flask config's keys
    assert app.conf.get("SQLALCHEMY_DATABASE_URI") == "sqlite://"
    with pytest.raises(AttributeError, match=r"'task_acks_lat': did you mean 'task_acks_late'"):
        _ = app.conf.task_acks_lat
    assert not hasattr(app.conf, "NOT_SET_ANYWHERE")


@pytest.mark.parametrize("name", ["worker_pool", "CELERYD_POOL", "CELERY_WORKER_POOL"])
def test_celerys_pool_type_is_ignored_with_what_to_set_instead(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not refused as a typo of worker_pools: it is Celery's, with a meaning of its own."""
    app = Celery("t", broker="memory://", set_as_current=False)
    with caplog.at_level(logging.WARNING, logger="celeriac.config"):
        app.conf.update({name: "prefork"})
    assert app.conf.worker_pools is None
    [line] = [r.getMessage() for r in caplog.records]
    assert f"Celery's setting {name!r} is not one celeriac reads" in line
    assert "worker_processes (-P N) sets the processes" in line
