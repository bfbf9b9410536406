"""A task checks a message's arguments against its parameters once per shape it has seen fit."""

from __future__ import annotations

import pytest

from celeriac import Celery


def test_a_shape_that_fitted_once_does_not_let_other_shapes_through() -> None:
    app = Celery("arguments", broker="memory://arguments")

    @app.task(name="arguments.add")
    def add(x: int, y: int = 0, *, scale: int = 1) -> int:
        return (x + y) * scale

    add.check_arguments([1, 2], {})
    add.check_arguments([3, 4], {})  # the same shape, other values: remembered
    add.check_arguments([1], {"scale": 2})
    for args, kwargs in [([], {}), ([1, 2, 3], {}), ([1], {"nope": 1}), ([1], {"x": 1})]:
        with pytest.raises(TypeError):
            add.check_arguments(args, kwargs)
    # A shape that failed is checked again (and fails again), never remembered as fitting.
    with pytest.raises(TypeError):
        add.check_arguments([], {})


def test_a_bound_task_s_self_is_not_one_of_its_arguments() -> None:
    app = Celery("arguments-bound", broker="memory://arguments-bound")

    @app.task(name="arguments.bound", bind=True)
    def bound(self: object, x: int) -> int:
        return x

    bound.check_arguments([1], {})
    with pytest.raises(TypeError):
        bound.check_arguments([1, 2], {})


def test_a_task_taking_any_keywords_remembers_a_bounded_number_of_shapes() -> None:
    app = Celery("arguments-any", broker="memory://arguments-any")

    @app.task(name="arguments.any")
    def anything(**fields: int) -> int:
        return len(fields)

    for i in range(1000):
        anything.check_arguments([], {f"field{i}": i})
    assert len(anything._fitting) <= 64
    with pytest.raises(TypeError):
        anything.check_arguments([1], {})
