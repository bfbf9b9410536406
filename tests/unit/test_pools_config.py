"""Pool specs from worker_pools and --pool, read without starting anything."""

from __future__ import annotations

import pytest

from celeriac.errors import ConfigurationError
from celeriac.worker.pools import PoolSpec, parse_pool, pool_from_mapping, resolve_pools


def test_a_pool_from_the_command_line() -> None:
    assert parse_pool("email: queues=email,bulk processes=2 concurrency=50") == PoolSpec(
        "email", ("email", "bulk"), 2, 50
    )
    assert parse_pool("data:queues=data") == PoolSpec("data", ("data",), 1, None)


def test_a_pool_from_the_setting() -> None:
    assert pool_from_mapping("img", {"queues": ["image"], "processes": "2"}) == PoolSpec(
        "img", ("image",), 2, None
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("email queues=email", "expected 'NAME: queues="),
        ("email: queues=email processes", "'processes' is not key=value"),
        ("email: queues=email procs=2", r"unknown key\(s\) procs"),
        ("email: processes=2", "has no queues"),
        ("email: queues=e processes=0", "processes must be at least 1"),
        ("email: queues=e processes=two", "whole numbers"),
    ],
)
def test_bad_pools_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_pool(text)


def test_command_line_pools_win_and_names_are_unique() -> None:
    configured = {"data": {"queues": ["data"], "processes": 4}}
    assert resolve_pools(configured, [], queues=["celery"], processes=1, concurrency=None) == [
        PoolSpec("data", ("data",), 4)
    ]
    given = ["email: queues=email"]
    assert resolve_pools(configured, given, queues=["x"], processes=1, concurrency=None) == [
        PoolSpec("email", ("email",))
    ]
    assert resolve_pools(None, [], queues=["a", "b"], processes=3, concurrency=20) == [
        PoolSpec("default", ("a", "b"), 3, 20)
    ]
    with pytest.raises(ConfigurationError, match="given twice: a"):
        resolve_pools(None, ["a: queues=x", "a: queues=y"], queues=[], processes=1, concurrency=1)
