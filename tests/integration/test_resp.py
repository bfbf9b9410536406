"""celeriac's own Redis client against the real server: multiplexing, errors, scripts,
dropped connections and timeouts. Keys are unique per test and deleted afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from celeriac.errors import ConfigurationError
from celeriac.transports.redis.client import Client, LoadingError, ReplyError, Script
from services import REDIS_DB_BROKER, delete_prefixed, eventually, redis_url, require_redis


@pytest.fixture
def prefix() -> AsyncIterator[str]:
    require_redis()
    value = f"celeriac-resp-{uuid.uuid4().hex}:"
    yield value
    delete_prefixed(value, REDIS_DB_BROKER)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client = Client(redis_url(REDIS_DB_BROKER))
    yield client
    await client.aclose()


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
    prefix: str, client: Client
) -> None:
    replies = await asyncio.gather(*(client.execute("ECHO", f"caller-{i}") for i in range(300)))
    assert replies == [f"caller-{i}".encode() for i in range(300)]
    counts = await asyncio.gather(*(client.execute("INCR", prefix + "n") for _ in range(50)))
    assert sorted(counts) == list(range(1, 51))
    names = await client.execute("CLIENT", "INFO")
    assert f"db={REDIS_DB_BROKER}".encode() in names  # the URL's database was selected


async def test_an_error_reply_is_raised_and_the_connection_stays_in_step(
    prefix: str, client: Client
) -> None:
    await client.execute("SET", prefix + "s", "text")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await client.execute("LPUSH", prefix + "s", "x")
    assert await client.execute("GET", prefix + "s") == b"text"

    pipe = client.pipeline()
    pipe.add("INCR", prefix + "s")  # not an integer: an error in the middle
    pipe.add("SET", prefix + "after", "1")
    with pytest.raises(ReplyError, match="not an integer"):
        await pipe.execute()
    # Every reply of the pipeline was read, so the next command gets its own.
    assert await client.execute("GET", prefix + "after") == b"1"


async def test_a_script_redis_lacks_is_sent_whole_once_then_run_by_sha(
    prefix: str, client: Client
) -> None:
    # A source no one ran before (its SHA is new), so Redis answers NOSCRIPT at first.
    script = Script(f"-- {uuid.uuid4()}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await client.execute("SCRIPT", "EXISTS", script.sha) == [0]
    assert await client.run_script(script, [prefix + "k"], [5]) == 5
    assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
    assert await client.run_script(script, [prefix + "k"], [2]) == 7

    fresh = Script(f"-- {uuid.uuid4()}\nreturn ARGV[1]")
    pipe = client.pipeline()
    pipe.run_script(fresh, [], ["a"])
    pipe.add("SET", prefix + "between", "1")
    pipe.run_script(fresh, [], ["b"])
    assert await pipe.execute() == [b"a", b"OK", b"b"]


async def test_a_dropped_connection_fails_what_waits_on_it_and_the_next_command_reconnects(
    prefix: str, client: Client
) -> None:
    blocked = await client.connection()
    blocked_id = await blocked.execute("CLIENT", "ID")
    pop = asyncio.ensure_future(blocked.execute("BLPOP", prefix + "never", 0))
    await client.execute("CLIENT", "KILL", "ID", blocked_id)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(pop, 5)
    assert not blocked.usable

    shared = await client.shared()
    shared_id = await client.execute("CLIENT", "ID")
    await client.execute("CLIENT", "KILL", "ID", shared_id, "SKIPME", "no")  # after this reply
    await asyncio.wait_for(shared.wait_closed(), 5)
    assert await client.execute("ECHO", "again") == b"again"
    assert await client.execute("CLIENT", "ID") != shared_id


async def test_a_reply_that_does_not_come_in_time_drops_the_connection(
    prefix: str, client: Client
) -> None:
    connection = await client.connection()
    with pytest.raises(TimeoutError, match=r"did not answer within 0\.2 s"):
        await connection.execute("BLPOP", prefix + "empty", 5, timeout=0.2)
    assert not connection.usable
    with pytest.raises(ConnectionError):
        await connection.execute("PING")


async def test_an_idle_connection_is_checked_before_use(prefix: str) -> None:
    client = Client(redis_url(REDIS_DB_BROKER), health_check_interval=0.001)
    try:
        first = await client.shared()
        first_id = await first.execute("CLIENT", "ID")
        killer = Client(redis_url(REDIS_DB_BROKER))
        await killer.execute("CLIENT", "KILL", "ID", first_id)
        await killer.aclose()
        await asyncio.wait_for(first.wait_closed(), 5)
        # Idle longer than the interval and dead: replaced before the command goes out.
        assert await client.execute("ECHO", "checked") == b"checked"
        assert await client.execute("CLIENT", "ID") != first_id
    finally:
        await client.aclose()


async def test_a_refused_login_or_database_is_a_configuration_error_not_an_outage() -> None:
    require_redis()
    for url in (
        redis_url(REDIS_DB_BROKER).replace("redis://", "redis://nobody:s3cret@"),
        redis_url(REDIS_DB_BROKER).rsplit("/", 1)[0] + "/99999",
    ):
        client = Client(url)
        try:
            with pytest.raises(ConfigurationError, match="refused the connection's set-up") as err:
                await client.execute("PING")
            assert "s3cret" not in str(err.value)
        finally:
            await client.aclose()


async def test_an_unreachable_server_is_an_oserror_and_a_loading_one_too() -> None:
    client = Client("redis://127.0.0.1:1/0", socket_connect_timeout=2)
    with pytest.raises(OSError):
        await client.execute("PING")
    await client.aclose()
    assert issubclass(LoadingError, OSError)


async def test_scans_see_every_key_and_field(prefix: str, client: Client) -> None:
    pipe = client.pipeline()
    for i in range(2500):
        pipe.add("HSET", prefix + "h", f"f{i}", i)
    for i in range(30):
        pipe.add("SET", f"{prefix}key:{i}", i)
    await pipe.execute()
    fields = {field: value async for field, value in client.scan_hash(prefix + "h")}
    assert len(fields) == 2500 and fields[b"f7"] == b"7"
    keys = {key async for key in client.scan_keys(f"{prefix}key:*")}
    assert keys == {f"{prefix}key:{i}".encode() for i in range(30)}


async def test_a_caller_cancelled_while_the_connection_opens_leaves_it_to_the_client() -> None:
    """The shared connection opens in a task of its own; a caller cancelled meanwhile must
    not take it along: the client keeps it, uses it next, and closes it with the rest."""
    require_redis()
    client = Client(redis_url(REDIS_DB_BROKER))
    try:
        waiting = asyncio.ensure_future(client.execute("PING"))
        await asyncio.sleep(0)  # it has started to connect
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        opened = await eventually(lambda: client._shared, 5, "the connection to open anyway")
        assert await client.execute("PING") == b"PONG"
        assert client._shared is opened  # the same connection, not a second one
    finally:
        await client.aclose()
    assert not opened.usable
