"""Redis connection settings, read without a server: URL parts, TLS, options, redaction."""

from __future__ import annotations

import pytest

from celeriac._redis import check_options, client_from_url
from celeriac.backends.redis import RedisBackend
from celeriac.brokers.redis import RedisBroker
from celeriac.config import redacted
from celeriac.errors import ConfigurationError


def test_url_password_db_and_options_reach_the_connections() -> None:
    client = client_from_url(
        "redis://:s3cret@cache.internal:6380/7", {"socket_timeout": 2, "max_connections": 9}
    )
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 7)
    assert kwargs["password"] == "s3cret"
    assert kwargs["socket_timeout"] == 2.0
    assert pool.max_connections == 9


def test_rediss_is_tls() -> None:
    pool = client_from_url("rediss://h:6379/0?ssl_cert_reqs=none", {}).connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"


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
