"""Transport options, checked alike on every transport without a server: a misspelt name is an
error that suggests the right one, a value of the wrong type an error naming the option and
the type, and a right value is what the transport uses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celery
from celeriac.errors import ConfigurationError
from celeriac.transports import backend_from_url, broker_from_url
from celeriac.transports.amqp.broker import AmqpBroker
from celeriac.transports.amqp.rpc import RpcBackend
from celeriac.transports.memory.backend import MemoryBackend
from celeriac.transports.memory.broker import MemoryBroker
from celeriac.transports.options import Option, checked_options
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.sqlite.backend import SQLiteBackend
from celeriac.transports.sqlite.broker import SQLiteBroker

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
#: A constructor of each transport, given its options (nothing connects).
Make = Callable[[Path, dict[str, Any]], object]
BROKERS: dict[str, Make] = {
    "sqlite": lambda tmp, o: SQLiteBroker(f"sqlite:///{tmp}/celeriac.db", options=o),
    "redis": lambda tmp, o: RedisBroker("redis://127.0.0.1:6379/15", options=o),
    "amqp": lambda tmp, o: AmqpBroker(AMQP, options=o),
}
BACKENDS: dict[str, Make] = {
    "sqlite": lambda tmp, o: SQLiteBackend(f"sqlite:///{tmp}/celeriac.db", options=o),
    "redis": lambda tmp, o: RedisBackend("redis://127.0.0.1:6379/15", options=o),
    "rpc": lambda tmp, o: RpcBackend("rpc://", options=o, broker_url=AMQP),
}
#: A float option each transport reads, to misspell and to give a string.
A_NUMBER = {"sqlite": "poll_interval", "redis": "socket_timeout", "amqp": "connect_timeout"}
A_NUMBER |= {"rpc": "reply_queue_expires"}


def test_a_misspelt_sqlite_option_is_refused_with_the_right_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/celeriac.db"
    with pytest.raises(
        ConfigurationError,
        match=r"unknown broker_transport_options option\(s\) 'visiblity_timeout' \(did you"
        r" mean 'visibility_timeout'\?\): the SQLite broker knows busy_timeout, poll_interval,"
        r" sweep_interval, visibility_timeout",
    ):
        broker_from_url(url, max_message_size=0, options={"visiblity_timeout": 5})
    with pytest.raises(ConfigurationError, match=r"'cleanup_evry' \(did you mean 'cleanup_every'"):
        backend_from_url(url, options={"cleanup_evry": 10})


def test_the_app_refuses_a_misspelt_sqlite_option_when_it_connects(tmp_path: Path) -> None:
    app = Celery("t", broker=f"sqlite:///{tmp_path}/celeriac.db", set_as_current=False)
    app.conf.broker_transport_options = {"visiblity_timeout": 5}
    with pytest.raises(ConfigurationError, match="did you mean 'visibility_timeout'"):
        app.send_task("t.add", (1, 2))


def test_sqlite_options_are_used_and_default_otherwise(tmp_path: Path) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/celeriac.db", options={"visibility_timeout": 5})
    assert (broker.visibility_timeout, broker.sweep_interval, broker.poll_interval) == (5, 2, 1)
    assert isinstance(broker.visibility_timeout, float)
    backend = SQLiteBackend(f"sqlite:///{tmp_path}/celeriac.db", options={"cleanup_every": 7})
    assert (backend.cleanup_every, backend.poll_interval) == (7, 1.0)


@pytest.mark.parametrize(("what", "make"), [*BROKERS.items(), *BACKENDS.items()])
def test_every_transport_refuses_a_misspelt_option(what: str, make: Make, tmp_path: Path) -> None:
    right = A_NUMBER[what]
    with pytest.raises(ConfigurationError, match=rf"did you mean {right!r}\?\)"):
        make(tmp_path, {right[:-1]: 1.0})


@pytest.mark.parametrize(("what", "make"), [*BROKERS.items(), *BACKENDS.items()])
def test_every_transport_refuses_a_number_given_as_a_string(
    what: str, make: Make, tmp_path: Path
) -> None:
    name = A_NUMBER[what]
    with pytest.raises(ConfigurationError, match=rf"option '{name}' must be a number.*not str '5'"):
        make(tmp_path, {name: "5"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "must be a number, not str '5'"),
        (True, "must be a number, not bool True"),
        (None, "must be a number, not NoneType None"),
    ],
)
def test_sqlite_names_the_option_and_the_type(tmp_path: Path, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"options option 'visibility_timeout' {message}"):
        SQLiteBroker(f"sqlite:///{tmp_path}/celeriac.db", options={"visibility_timeout": value})
    with pytest.raises(ConfigurationError, match=r"'cleanup_every' must be an int, not float 1\.5"):
        SQLiteBackend(f"sqlite:///{tmp_path}/celeriac.db", options={"cleanup_every": 1.5})


def test_memory_takes_no_options() -> None:
    with pytest.raises(ConfigurationError, match=r"'visibility_timeout': memory:// takes none"):
        MemoryBroker("memory://opts", options={"visibility_timeout": 5})
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        MemoryBackend("memory://opts", options={"global_keyprefix": "x"})
    MemoryBroker("memory://opts", options={})


def test_none_stands_for_a_default_that_is_none_only() -> None:
    declared = {"socket_timeout": Option(float, None), "ttl": Option(float, 1.0)}
    assert checked_options({"socket_timeout": None}, declared, "x", "y")["socket_timeout"] is None
    with pytest.raises(ConfigurationError, match="'socket_timeout' must be a number or None"):
        checked_options({"socket_timeout": "1"}, declared, "x", "y")
    assert checked_options({"ttl": 2}, declared, "x", "y") == {"socket_timeout": None, "ttl": 2.0}
