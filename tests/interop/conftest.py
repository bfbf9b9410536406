"""Fixtures of the interop tests: one :class:`~interop.harness.InteropRun` per test module
(its key prefix, queues, marks and workers, deleted or stopped afterwards), set in the
environment while the module runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from interop.harness import INTEROP_BROKERS, InteropRun
from services import require_redis


@pytest.fixture(scope="module", params=INTEROP_BROKERS)
def interop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InteropRun]:
    """This module's run on one broker: its prefix, queues and marks, set in the environment
    meanwhile."""
    require_redis()
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    with InteropRun(name, tmp_path_factory.mktemp(name), request.param).active() as run:
        yield run


@pytest.fixture
def queue(interop: InteropRun) -> str:
    """A queue of this test's own, consumed by the module's worker."""
    return interop.queue()
