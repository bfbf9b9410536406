"""An option celeriac does not support is an error that names it, never accepted and
ignored (a ``link=`` callback that silently never runs)."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac import sending
from inprocess import memory_app


def test_a_link_that_is_not_a_signature_is_refused_naming_the_option() -> None:
    """``link``/``link_error`` take signatures, as Celery's canvas does: a task name (what
    a Celery user may pass by mistake) is a TypeError that names the option and the form."""
    app = memory_app("options")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    options: dict[str, Any] = {"link": "callback"}
    with pytest.raises(TypeError, match="'link' must be a signature") as raised:
        add.apply_async((1, 2), **options)
    assert "add.s(2)" in str(raised.value)
    with pytest.raises(TypeError, match="'link_error' must be a signature"):
        add.apply_async((1, 2), link_error="errback")  # type: ignore[arg-type]


def test_an_unknown_option_is_refused_with_the_supported_ones_listed() -> None:
    app = memory_app("options")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    options: dict[str, Any] = {"routing_key": "fast", "countdown": 1}
    with pytest.raises(TypeError, match="'routing_key'") as raised:
        add.apply_async((1, 2), **options)
    message = str(raised.value)
    assert "task_id" in message and all(name in message for name in sending.OPTION_NAMES)
    with pytest.raises(TypeError, match="'retry_policy'"):
        app.send_task("tasks.add", (1, 2), retry_policy={})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'shadow'"):
        add.apply_many([(1, 2)], shadow="other")  # type: ignore[call-arg]


def test_the_supported_options_pass() -> None:
    sending.check_options({name: None for name in sending.OPTION_NAMES})
