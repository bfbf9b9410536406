"""The ``celeriac worker`` command names an async task that blocks its event loop, and the
task's own line, while the loop is blocked (SQLite broker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import APPS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True),
]


@pytest.fixture
def blocking(broker_url: str) -> Iterator[Any]:
    import blocking as module

    yield module
    module.app.close()


def test_the_worker_command_names_the_blocking_task_and_its_line(
    start_worker: Any, blocking: Any
) -> None:
    worker = start_worker(app="blocking:app")
    result = blocking.blocks_the_loop.delay(1.0)
    assert result.get(timeout=20) == "done"
    line = worker.wait_for("the event loop has been blocked")
    assert f"by task blocking.blocks_the_loop[{result.id}]" in line
    assert f"at {APPS / 'blocking.py'}:19 in blocks_the_loop" in line
    worker.wait_for("the event loop runs again, after about")
