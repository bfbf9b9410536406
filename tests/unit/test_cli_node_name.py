"""``-n/--hostname`` as Celery reads it: name@host with %h, %n, %d and %% expanded."""

from __future__ import annotations

import pytest

from celeriac.cli import node_name
from celeriac.errors import ConfigurationError

HOST = "box.example.com"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("w1@%h", "w1@box.example.com"),
        ("%n@%d", "box@example.com"),
        ("worker.%n@%h", "worker.box@box.example.com"),
        ("box2", "celeriac@box2"),  # no @: the host part, as Celery's nodesplit reads it
        ("w1@", "w1@box.example.com"),
        ("100%%@%h", "100%@box.example.com"),
    ],
)
def test_celery_abbreviations_are_expanded(given: str, expected: str) -> None:
    assert node_name(given, host=HOST) == expected


def test_a_supervised_process_adds_its_slot_to_the_name() -> None:
    assert node_name("w1@%h", "default-2", host=HOST) == "w1-default-2@box.example.com"
    assert node_name(None, "default-2", host=HOST) == "default-2@box.example.com"
    assert node_name(None, host=HOST) is None  # the worker's own default


def test_an_unknown_abbreviation_names_the_ones_that_exist() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown %i; celeriac expands %h"):
        node_name("w1-%i@%h", host=HOST)
