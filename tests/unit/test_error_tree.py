"""The exception tree: ``except CeleriacError`` catches celeriac's errors, never a control-flow
signal such as ``Retry``, and the tree drawn in ``errors.py`` names every class there."""

from __future__ import annotations

import inspect
import re
from typing import Any

from celeriac import errors
from celeriac.errors import CeleriacError, Replace, Retry
from inprocess import memory_app, run_worker


def _exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    ]


def test_retry_is_a_signal_not_a_celeriac_error() -> None:
    assert issubclass(Retry, Exception)
    assert not issubclass(Retry, CeleriacError)


def test_every_class_in_errors_is_drawn_in_its_docstring_tree() -> None:
    tree = errors.__doc__ or ""
    drawn = set(re.findall(r"(?m)^ {4}[ │├└─]*(\w+)", tree))  # each tree line's first name
    missing = {cls.__name__ for cls in _exception_classes()} - drawn
    assert not missing, f"errors.py's docstring tree lacks {sorted(missing)}"


def test_every_error_but_the_signals_is_a_celeriac_error() -> None:
    signals = {Retry, Replace}
    for cls in _exception_classes():
        assert issubclass(cls, CeleriacError) != (cls in signals), cls


async def test_a_retry_inside_except_celeriac_error_still_reaches_the_worker() -> None:
    app = memory_app("error-tree")
    runs: list[int] = []

    @app.task(bind=True, max_retries=3)
    def guarded(self: Any) -> str:
        runs.append(self.request.retries)
        try:
            if self.request.retries < 2:
                raise self.retry(countdown=0)
        except CeleriacError:
            return "swallowed"
        return f"ran {len(runs)} times"

    async def work() -> Any:
        result = await guarded.delay()
        return await result.get(timeout=10)

    assert await run_worker(app, work) == "ran 3 times"
    assert runs == [0, 1, 2]


def test_a_retry_inside_except_celeriac_error_is_retried_when_applied_eagerly() -> None:
    app = memory_app("error-tree-eager")
    runs: list[int] = []

    @app.task(bind=True, max_retries=3)
    def guarded(self: Any) -> str:
        runs.append(self.request.retries)
        try:
            if self.request.retries < 1:
                raise self.retry(countdown=60)
        except CeleriacError:
            return "swallowed"
        return "retried"

    assert guarded.apply().get() == "retried"
    assert runs == [0, 1]
