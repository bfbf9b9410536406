"""Fixtures of the interop tests: one :class:`~interop.harness.InteropRun` per test module
(its key prefix, queues, marks and workers, deleted or stopped afterwards), set in the
environment while the module runs."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from interop.harness import INTEROP_BROKERS, InteropRun, WorkerProcess, answering
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


# The two peers' workers and clients, for the modules that drive each side's worker from the
# other side's client. A module may define its own (Flower's starts the worker with -E): the
# clients then use the module's.


@pytest.fixture(scope="module")
def celeriac_worker(interop: InteropRun) -> WorkerProcess:
    return interop.start_celeriac_worker(interop.pool[:2])


@pytest.fixture(scope="module")
def celery_worker(interop: InteropRun) -> WorkerProcess:
    return interop.start_celery_worker(interop.pool[2:4])


@pytest.fixture(scope="module")
def celery(interop: InteropRun, celeriac_worker: WorkerProcess) -> Iterator[ModuleType]:
    """The Celery peer, as the client of the celeriac worker."""
    from interop.peers import celery_app

    celery_app.configure()
    answering(celery_app.app, celeriac_worker)
    yield celery_app
    celery_app.close()


@pytest.fixture(scope="module")
def celeriac(interop: InteropRun, celery_worker: WorkerProcess) -> Iterator[ModuleType]:
    """The celeriac peer, as the client of the Celery worker."""
    from interop.peers import celeriac_app

    celeriac_app.configure()
    answering(celeriac_app.app, celery_worker)
    yield celeriac_app
    celeriac_app.app.close()
