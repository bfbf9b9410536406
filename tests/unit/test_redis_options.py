"""Redis connection settings, read without a server: URL parts, TLS, options, redaction."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from celeriac.errors import ConfigurationError
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.client import Connection, _Protocol, pack, parse_url
from celeriac.transports.redis.connection import check_options, client_from_url
from celeriac.transports.urls import redacted


def test_url_password_db_and_options_reach_the_client() -> None:
    client = client_from_url(
        "redis://:s3cret@cache.internal:6380/7", {"socket_timeout": 2, "health_check_interval": 30}
    )
    address = client.address
    assert (address.host, address.port, address.db) == ("cache.internal", 6380, 7)
    assert (address.username, address.password, address.tls) == (None, "s3cret", None)
    assert (client.socket_timeout, client.health_check_interval) == (2.0, 30.0)
    assert client.socket_connect_timeout == 5.0
    user = parse_url("redis://app%40x:p%2Fw@h")
    assert (user.username, user.password, user.port, user.db) == ("app@x", "p/w", 6379, 0)


def test_rediss_is_tls_set_up_by_celerys_url_parameters() -> None:
    none = parse_url("rediss://h:6379/0?ssl_cert_reqs=none").tls
    assert none is not None and none.verify_mode == ssl.CERT_NONE and not none.check_hostname
    required = parse_url("rediss://h:6379/0").tls
    assert required is not None and required.verify_mode == ssl.CERT_REQUIRED
    assert required.check_hostname


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?ssl_cert_reqs=none", "a redis:// URL none"),
        ("rediss://h/0?sslmode=x", "unknown URL parameter.*sslmode"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs=maybe is not one of"),
        ("redis://h/zero", "must be numbers"),
        ("http://h/0", "not a redis:// or rediss:// URL"),
    ],
)
def test_bad_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_url(url)


def test_commands_are_packed_as_resp() -> None:
    assert (
        pack(["SET", b"k\r\n", 5, 1.5])
        == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n$3\r\n1.5\r\n"
    )


def test_password_is_redacted_in_messages() -> None:
    assert redacted("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redacted("redis://:s3cret@h/0") == "redis://:***@h/0"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


def test_options_have_defaults_and_unknown_ones_are_named() -> None:
    broker = RedisBroker("redis://h/0", options={"visibility_timeout": 60})
    assert (broker.visibility_timeout, broker.restore_interval, broker.prefix) == (60.0, 1.0, "")
    with pytest.raises(ConfigurationError, match=r"'visibility'.*visibility_timeout"):
        check_options({"visibility": 1}, {"visibility_timeout": 1}, "broker_transport_options")
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        RedisBackend("redis://h/0", options={"visibility_timeout": 60})


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ("", "celery-task-meta-x"),
        ("app:", "app:celery-task-meta-x"),
        ("app", "app_celery-task-meta-x"),
    ],
)
def test_result_keys_follow_celerys_prefix_rule(prefix: str, key: str) -> None:
    assert RedisBackend("redis://h/0", options={"global_keyprefix": prefix}).key("x") == key


async def test_senders_wait_while_the_transport_buffer_is_full() -> None:
    class Transport:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def get_extra_info(self, name: str) -> None:
            return None

    transport = Transport()
    protocol = _Protocol(None)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    connection = Connection(protocol, None)
    protocol.pause_writing()
    reply = asyncio.ensure_future(connection.execute("PING"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.written == [] and not reply.done()
    protocol.resume_writing()
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.written == [b"*1\r\n$4\r\nPING\r\n"]
    protocol.data_received(b"+PONG\r\n")
    assert await reply == b"PONG"
