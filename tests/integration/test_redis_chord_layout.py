"""A Redis chord join as Celery keeps it, checked with a raw client: ``celery-taskset-meta-``
keys ``.s``, ``.j``, ``.d``, ``.c`` and the group's record, with Celery 5.7's values, so that
Celery 5.7 and 5.6 workers can join the same chord as celeriac's (see WAVE2.md §1.4.2).

Celery 5.7's own scripts (imported from the installed Celery) record parts beside celeriac's
here, as a Celery worker on the same chord would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from celery.backends.redis import (  # type: ignore[import-untyped]
    CHORD_CLEANUP_LUA,
    CHORD_PART_RETURN_LUA,
)

from celeriac.transports.backend import ChordPart
from celeriac.transports.redis.backend import RedisBackend
from services import REDIS_DB_RESULTS, delete_prefixed, redis_url, require_redis

EXPIRES = 86400  # Celery's result_expires, which its chords keep
EXPIRE_RANGE = (EXPIRES - 5, EXPIRES)  # a TTL just set
KABOOM = {"exc_type": "ValueError", "exc_message": ["kaboom"], "exc_module": "builtins"}


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    value = f"celeriac-chord-{uuid.uuid4().hex}:"
    yield value
    delete_prefixed(value, REDIS_DB_RESULTS)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(REDIS_DB_RESULTS))
    yield client
    await client.aclose()


@pytest.fixture
async def backend(prefix: str) -> AsyncIterator[RedisBackend]:
    made = RedisBackend(redis_url(REDIS_DB_RESULTS), options={"global_keyprefix": prefix})
    await made.connect()
    yield made
    await made.close()


def keys_of(prefix: str, group_id: str) -> dict[str, str]:
    base = f"{prefix}celery-taskset-meta-{group_id}"
    return {suffix: base + suffix for suffix in ("", ".s", ".j", ".t", ".d", ".c")}


def member(task_id: str, state: str, value: Any) -> bytes:
    """``[1, "<task id>", "<STATE>", <value>]`` as Celery's kombu JSON writes it."""
    return f"[1, {json.dumps(task_id)}, {json.dumps(state)}, {json.dumps(value)}]".encode()


async def celery_57_part(
    raw: aioredis.Redis, prefix: str, group_id: str, task_id: str, index: int, value: Any
) -> list[Any]:
    """What a Celery 5.7 worker runs when a header task ends (its arguments as captured)."""
    key = keys_of(prefix, group_id)
    keys = [key[".j"], key[".t"], key[".s"], key[".d"], key[""], key[".c"]]
    args: list[str | bytes | int] = [task_id, member(task_id, "SUCCESS", value), 1, index]
    args += [EXPIRES, EXPIRES, 6]  # the join's and the group's seconds, the claim's
    result: list[Any] = await raw.eval(CHORD_PART_RETURN_LUA, 6, *keys, *args, uuid.uuid4().hex)
    return result


async def test_chord_keys_hold_celerys_values(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    group_id = str(uuid.uuid4())
    key = keys_of(prefix, group_id)
    await raw.set(key[".c"], "done")  # a finished run of the same (frozen) chord
    await backend.chord_start(group_id, 3, expires=EXPIRES)
    assert await raw.get(key[".s"]) == b"3"
    assert EXPIRE_RANGE[0] < await raw.ttl(key[".s"]) <= EXPIRE_RANGE[1]
    assert not await raw.exists(key[".c"])  # DEL .c: a new run

    first, last = str(uuid.uuid4()), str(uuid.uuid4())
    failed = "1deb37fd-d95d-463d-9dee-a1492e979be0"  # as captured (chord-header-fail)
    parts = [
        ChordPart(first, 0, "SUCCESS", 2),
        ChordPart(failed, 1, "FAILURE", KABOOM),
        ChordPart(last, None, "SUCCESS", [1, "two"]),
    ]
    for part in parts[:2]:
        assert await backend.chord_part(group_id, part, expires=EXPIRES) is None
    assert await raw.zrange(key[".j"], 0, -1, withscores=True) == [
        (member(first, "SUCCESS", 2), 0.0),
        (
            b'[1, "1deb37fd-d95d-463d-9dee-a1492e979be0", "FAILURE", {"exc_type": "ValueError",'
            b' "exc_message": ["kaboom"], "exc_module": "builtins"}]',
            1.0,
        ),
    ]
    assert await raw.smembers(key[".d"]) == {f"{first}:0".encode(), f"{failed}:1".encode()}
    for suffix in (".j", ".d", ".s"):
        assert EXPIRE_RANGE[0] < await raw.ttl(key[suffix]) <= EXPIRE_RANGE[1]
    assert not await raw.exists(key[".c"])

    assert await backend.chord_part(group_id, parts[2], expires=EXPIRES) == parts
    assert (await raw.zrange(key[".j"], -1, -1, withscores=True)) == [
        (member(last, "SUCCESS", [1, "two"]), float("inf"))
    ]
    assert f"{last}:+inf".encode() in await raw.smembers(key[".d"])
    token = await raw.get(key[".c"])
    assert token is not None and len(token) == 32 and int(token, 16) >= 0  # a uuid4 hex
    assert 6 < await raw.ttl(key[".c"]) <= 21  # held for the body's publish

    await backend.chord_done(group_id)
    assert await raw.get(key[".c"]) == b"done"
    assert 295 < await raw.ttl(key[".c"]) <= 300
    assert not await raw.exists(key[".s"], key[".j"], key[".t"], key[".d"])


async def test_the_group_record_is_celerys(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    group_id, child = str(uuid.uuid4()), str(uuid.uuid4())
    meta = {"result": [[group_id, None], [[[child, None], None]]]}
    await backend.save_group(group_id, meta, expires=EXPIRES)
    key = keys_of(prefix, group_id)[""]
    # As captured from GroupResult.save() (fixture result-group-saved.json).
    assert await raw.get(key) == (
        f'{{"result": [["{group_id}", null], [[["{child}", null], null]]]}}'.encode()
    )
    assert EXPIRE_RANGE[0] < await raw.ttl(key) <= EXPIRE_RANGE[1]
    await raw.set(key, json.dumps({"result": [[group_id, None], []]}))  # saved by Celery
    assert await backend.restore_group(group_id) == {"result": [[group_id, None], []]}


async def test_a_part_recorded_by_celery_56_counts(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    """Celery 5.6 records a part with ZADD to ``.j`` alone (no ``.d``, no claim)."""
    group_id = str(uuid.uuid4())
    key = keys_of(prefix, group_id)
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    await backend.chord_start(group_id, 2, expires=EXPIRES)
    await raw.zadd(key[".j"], {member(old, "SUCCESS", 4): 0})
    assert await backend.chord_part(group_id, ChordPart(new, 1, "SUCCESS", 9), expires=60) == [
        ChordPart(old, 0, "SUCCESS", 4),
        ChordPart(new, 1, "SUCCESS", 9),
    ]


async def test_celery_57_and_celeriac_join_one_chord(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    """Either side's part may be the last: whoever completes the chord claims it, and the
    other side's late copies find it claimed, then over."""
    # Celery's part first, celeriac's completes.
    group_id = str(uuid.uuid4())
    theirs, ours = str(uuid.uuid4()), str(uuid.uuid4())
    await backend.chord_start(group_id, 2, expires=EXPIRES)
    count, _, size, claimed = await celery_57_part(raw, prefix, group_id, theirs, 0, "a")
    assert (count, size, claimed) == (1, b"2", 0)
    got = await backend.chord_part(group_id, ChordPart(ours, 1, "SUCCESS", "b"), expires=EXPIRES)
    assert got == [ChordPart(theirs, 0, "SUCCESS", "a"), ChordPart(ours, 1, "SUCCESS", "b")]
    # A copy of Celery's part while celeriac publishes the body: no second claim.
    assert (await celery_57_part(raw, prefix, group_id, theirs, 0, "a"))[3] == 0
    await backend.chord_done(group_id)
    assert (await celery_57_part(raw, prefix, group_id, theirs, 0, "a"))[0] == -1

    # celeriac's part first, Celery's completes and claims; its cleanup ends the chord.
    group_id = str(uuid.uuid4())
    key = keys_of(prefix, group_id)
    await backend.chord_start(group_id, 2, expires=EXPIRES)
    part = ChordPart(ours, 0, "SUCCESS", "a")
    assert await backend.chord_part(group_id, part, expires=EXPIRES) is None
    count, _, _, claimed = await celery_57_part(raw, prefix, group_id, theirs, 1, "b")
    assert (count, claimed) == (2, 1)
    assert await backend.chord_part(group_id, part, expires=EXPIRES) is None  # claimed
    token = await raw.get(key[".c"])
    assert token is not None
    cleanup_keys = [key[".c"], key[".j"], key[".t"], key[".s"], key[".d"]]
    assert await raw.eval(CHORD_CLEANUP_LUA, 5, *cleanup_keys, token, 300) == 1
    assert await backend.chord_part(group_id, part, expires=EXPIRES) is None  # over
