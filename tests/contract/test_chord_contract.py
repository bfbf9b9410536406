"""What every store that joins chords promises (``joins_chords``): saved groups, and the
chord join of ``chord_start`` / ``chord_part`` / ``chord_done``. Runs once per result backend
(see conftest.BACKENDS); rpc:// joins none (conftest.NOT_FOR)."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from celeriac.transports.backend import ChordPart, ResultBackend
from services import eventually

from .conftest import TAKES_CLOCK, MakeBackend
from .test_backend_contract import Clock

WAIT = 5.0
EXPIRES = 60.0


def new_id() -> str:
    return str(uuid.uuid4())


def success(index: int | None, value: Any = None) -> ChordPart:
    return ChordPart(new_id(), index, "SUCCESS", index if value is None else value)


async def joiner(make_backend: MakeBackend, **settings: Any) -> ResultBackend:
    backend = await make_backend(**settings)
    assert backend.joins_chords
    return backend


async def record(
    backend: ResultBackend, group_id: str, parts: list[ChordPart]
) -> list[list[ChordPart] | None]:
    """Each part in turn, as header tasks ending one after another; what each call got."""
    return [await backend.chord_part(group_id, part, expires=EXPIRES) for part in parts]


async def test_the_last_part_gets_every_part_in_index_order(make_backend: MakeBackend) -> None:
    backend = await joiner(make_backend)
    group_id = new_id()
    parts = [success(index) for index in range(6)]
    shuffled = random.sample(parts, len(parts))
    await backend.chord_start(group_id, len(parts), expires=EXPIRES)
    got = await record(backend, group_id, shuffled)
    assert got[:-1] == [None] * (len(parts) - 1)
    assert got[-1] == parts


async def test_parts_without_an_index_come_last_in_order_of_their_record(
    make_backend: MakeBackend,
) -> None:
    """Celery scores a part without a group index +inf; Redis orders equal scores by the
    member's bytes (``[1, "<task id>", ...]``): by task id."""
    backend = await joiner(make_backend)
    group_id = new_id()
    unindexed = sorted((success(None, "x") for _ in range(3)), key=lambda p: p.task_id)
    indexed = [success(1), success(0)]
    await backend.chord_start(group_id, 5, expires=EXPIRES)
    got = await record(backend, group_id, [unindexed[2], indexed[0], unindexed[0], indexed[1]])
    assert got == [None] * 4
    assert await backend.chord_part(group_id, unindexed[1], expires=EXPIRES) == [
        indexed[1],
        indexed[0],
        *unindexed,
    ]


async def test_racing_parts_complete_the_chord_for_one_caller(make_backend: MakeBackend) -> None:
    """Header tasks ending at once on several workers (one instance each): exactly one of
    them gets the parts, and so publishes the body."""
    workers = [await joiner(make_backend) for _ in range(4)]
    group_id = new_id()
    parts = [success(index) for index in range(40)]
    await workers[0].chord_start(group_id, len(parts), expires=EXPIRES)
    got = await asyncio.gather(
        *(
            workers[n % len(workers)].chord_part(group_id, part, expires=EXPIRES)
            for n, part in enumerate(parts)
        )
    )
    completed = [g for g in got if g is not None]
    assert completed == [parts]


async def test_parts_from_other_connections_complete_the_chord_once(
    make_backend: MakeBackend,
) -> None:
    """Workers in other threads, each with its own loop and connection (for SQLite, as
    processes sharing the file would: the claim holds across connections)."""
    first = await joiner(make_backend)
    group_id = new_id()
    parts = [success(index) for index in range(12)]
    await first.chord_start(group_id, len(parts), expires=EXPIRES)

    async def worker(mine: list[ChordPart]) -> list[list[ChordPart] | None]:
        backend = type(first)(first.url, options=first.options)
        await backend.connect()
        try:
            return list(
                await asyncio.gather(
                    *(backend.chord_part(group_id, part, expires=EXPIRES) for part in mine)
                )
            )
        finally:
            await backend.close()

    got = await asyncio.gather(
        *(asyncio.to_thread(asyncio.run, worker(parts[n::4])) for n in range(4))
    )
    completed = [g for results in got for g in results if g is not None]
    assert completed == [parts]


async def test_a_part_that_comes_twice_counts_once(make_backend: MakeBackend) -> None:
    """A redelivered header task records its part again, maybe with another value: the
    first one counts, the copy neither adds to the count nor completes the chord."""
    backend = await joiner(make_backend)
    group_id = new_id()
    first, second, third = success(0, "first"), success(1), success(2)
    again = ChordPart(first.task_id, 0, "SUCCESS", "again")
    await backend.chord_start(group_id, 3, expires=EXPIRES)
    assert await record(backend, group_id, [first, again, first, second]) == [None] * 4
    assert await backend.chord_part(group_id, third, expires=EXPIRES) == [first, second, third]
    # A copy of the last part, while the body is being published: nobody else gets it.
    assert await backend.chord_part(group_id, third, expires=EXPIRES) is None


async def test_a_part_before_chord_start_counts(make_backend: MakeBackend) -> None:
    """The size is set just before the last header task is published, so a part may come
    first: it counts, and the last part (which always finds the size) completes."""
    backend = await joiner(make_backend)
    group_id = new_id()
    early, late = success(0), success(1)
    assert await backend.chord_part(group_id, early, expires=EXPIRES) is None
    await backend.chord_start(group_id, 2, expires=EXPIRES)
    assert await backend.chord_part(group_id, late, expires=EXPIRES) == [early, late]


async def test_failed_parts_carry_the_exception_record(make_backend: MakeBackend) -> None:
    backend = await joiner(make_backend)
    group_id = new_id()
    kaboom = {"exc_type": "ValueError", "exc_message": ["kaboom"], "exc_module": "builtins"}
    revoked = {
        "exc_type": "TaskRevokedError",
        "exc_message": ["revoked"],
        "exc_module": "celery.exceptions",
    }
    parts = [
        ChordPart(new_id(), 0, "FAILURE", kaboom),
        ChordPart(new_id(), 1, "SUCCESS", {"at": datetime(2030, 1, 2, tzinfo=UTC)}),
        ChordPart(new_id(), 2, "REVOKED", revoked),
    ]
    await backend.chord_start(group_id, 3, expires=EXPIRES)
    got = await record(backend, group_id, parts)
    assert got[-1] == parts  # kombu's JSON: the datetime comes back a datetime


async def test_after_chord_done_a_late_part_is_ignored(make_backend: MakeBackend) -> None:
    backend = await joiner(make_backend)
    group_id = new_id()
    parts = [success(0), success(1)]
    await backend.chord_start(group_id, 2, expires=EXPIRES)
    assert (await record(backend, group_id, parts))[-1] == parts
    await backend.chord_done(group_id)
    # Copies of header tasks redelivered late: the chord is over, nothing counts.
    assert await backend.chord_part(group_id, parts[1], expires=EXPIRES) is None
    assert await backend.chord_part(group_id, success(2), expires=EXPIRES) is None
    # Started again (a frozen chord applied twice), it joins anew.
    await backend.chord_start(group_id, 1, expires=EXPIRES)
    again = success(0, "again")
    assert await backend.chord_part(group_id, again, expires=EXPIRES) == [again]


async def test_a_group_is_saved_restored_and_forgotten(make_backend: MakeBackend) -> None:
    backend, other = await joiner(make_backend), await joiner(make_backend)
    group_id, children = new_id(), [new_id(), new_id()]
    # Celery's GroupResult.save(): {"result": GroupResult.as_tuple()}.
    meta = {"result": [[group_id, None], [[[child, None], None] for child in children]]}
    assert await backend.restore_group(group_id) is None
    await backend.save_group(group_id, meta, expires=EXPIRES)
    assert await other.restore_group(group_id) == meta
    await other.forget_group(group_id)
    assert await backend.restore_group(group_id) is None
    await backend.forget_group(group_id)  # forgetting twice is fine


async def test_chord_joins_and_groups_expire(
    make_backend: MakeBackend, request: pytest.FixtureRequest
) -> None:
    """A join kept ``expires`` seconds after its last start or part is gone afterwards:
    the parts it had no longer count. A saved group goes too, and one kept forever stays."""
    group_id, kept = new_id(), new_id()
    first, second = success(0), success(1)
    meta = {"result": [[group_id, None], []]}
    if request.node.callspec.params["make_backend"] in TAKES_CLOCK:
        clock = Clock()
        backend = await joiner(make_backend, clock=clock)
        await backend.chord_start(group_id, 2, expires=10)
        assert await backend.chord_part(group_id, first, expires=10) is None
        await backend.save_group(group_id, meta, expires=10)
        await backend.save_group(kept, meta, expires=None)
        clock.at += 9
        assert await backend.restore_group(group_id) == meta
        clock.at += 2
        assert await backend.restore_group(group_id) is None
    else:  # by the server's clock
        backend = await joiner(make_backend)
        await backend.chord_start(group_id, 2, expires=0.2)
        assert await backend.chord_part(group_id, first, expires=0.2) is None
        await backend.save_group(group_id, meta, expires=0.2)  # after the join: gone after it
        await backend.save_group(kept, meta, expires=None)
        await eventually(
            lambda: _is_none(backend.restore_group(group_id)), WAIT, "the group to expire"
        )
    assert await backend.restore_group(kept) == meta
    # The size went: the second part alone completes nothing.
    assert await backend.chord_part(group_id, second, expires=EXPIRES) is None
    # Started again, the first part (forgotten) must come again.
    await backend.chord_start(group_id, 2, expires=EXPIRES)
    assert await backend.chord_part(group_id, second, expires=EXPIRES) is None
    assert await backend.chord_part(group_id, first, expires=EXPIRES) == [first, second]


async def _is_none(value: Any) -> bool:
    return await value is None
