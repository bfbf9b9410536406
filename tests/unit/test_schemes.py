"""The scheme table names, for each scheme, classes that exist and are what they claim."""

from __future__ import annotations

import pytest

from celeriac.errors import ConfigurationError
from celeriac.transports import SCHEMES, _load
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_each_scheme_opens_a_broker_or_a_result_store(scheme: str) -> None:
    entry = SCHEMES[scheme]
    assert entry.broker or entry.backend
    if entry.broker:
        assert issubclass(_load(f"{scheme}://x", "broker"), Broker)
    if entry.backend:
        assert issubclass(_load(f"{scheme}://x", "result backend"), ResultBackend)


def test_a_scheme_that_is_not_a_broker_says_which_are() -> None:
    with pytest.raises(ConfigurationError, match=r"unsupported broker URL 'rpc://'.*amqp://"):
        _load("rpc://", "broker")
    with pytest.raises(ConfigurationError, match=r"'amqp://x'.*disabled://.*rpc://"):
        _load("amqp://x", "result backend")
