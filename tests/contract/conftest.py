"""Fixtures that run the contract suite against every transport.

The transports are those of ``tests/transports.py`` (the tests' one list): ``BROKERS`` and
``BACKENDS`` are its brokers and result backends, and a new transport joins by its entry
there. Every instance a test makes shares one fresh store (its URL and options); Redis stores
get a key prefix of their own per test, and what the test left in a store is deleted
afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.serialization import json_text
from celeriac.transports.amqp.broker import AmqpBroker
from celeriac.transports.amqp.rpc import RpcBackend
from celeriac.transports.backend import ResultBackend
from celeriac.transports.broker import Broker
from services import AMQP_URL, delete_amqp_queues
from transports import TRANSPORTS, Corner, Transport


class _RpcToTheFirst(RpcBackend):
    """rpc:// in the shared suite, whose tests make several backends on one store. With
    rpc:// a caller's store is its reply queue: here the first backend a test makes is the
    caller, and the others send it what they store, as a worker replies to its task's
    ``reply_to``. rpc:// delivers asynchronously, so a store returns once the caller has the
    state, and a test may read it at once, as it would from any other store."""

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options, broker_url=AMQP_URL)
        self.caller: _RpcToTheFirst = self
        self._seen: set[tuple[str, bytes]] = set()
        self._arrival = asyncio.Condition()

    async def store(
        self, task_id: str, meta: Any, *, expires: float | None, reply_to: str | None = None
    ) -> None:
        caller = self.caller
        await super().store(task_id, meta, expires=expires, reply_to=reply_to or caller.queue)
        await caller.received(task_id, json_text(meta).encode())

    async def received(self, task_id: str, data: bytes) -> None:
        async with asyncio.timeout(5), self._arrival:
            await self._arrival.wait_for(lambda: (task_id, data) in self._seen)

    async def _arrived(self, message: Any) -> None:
        await super()._arrived(message)
        self._seen.add((str(message.header.properties.correlation_id), bytes(message.body)))
        async with self._arrival:
            self._arrival.notify_all()


BROKERS: dict[str, Transport] = {name: t for name, t in TRANSPORTS.items() if t.broker}
BACKENDS: dict[str, Transport] = {name: t for name, t in TRANSPORTS.items() if t.backend}
#: Backends that take part through a class of the suite's own (each says why).
STAND_INS: dict[str, type[ResultBackend]] = {"rpc": _RpcToTheFirst}
#: Contract tests a backend does not take part in, and why.
_NO_KEYS = "rpc:// keeps nothing on a server: it is no KeyValueBackend (no counters, leases)"
NOT_FOR = {
    "rpc": {
        "test_records_expire": "rpc:// states live in the caller, as many as max_cached: no"
        " time-based expiry (Celery's rpc backend has none either)",
        **dict.fromkeys(
            (
                "test_counters_count_atomically",
                "test_counters_expire",
                "test_a_lease_has_one_holder_at_a_time",
                "test_a_lease_expires_and_renewing_extends_it",
                "test_leases_and_counters_check_their_arguments",
                "test_revoked_ids_are_kept_until_their_end_and_seen_by_every_connection",
            ),
            _NO_KEYS,
        ),
        **dict.fromkeys(
            (
                "test_the_last_part_gets_every_part_in_index_order",
                "test_parts_without_an_index_come_last_in_order_of_their_record",
                "test_racing_parts_complete_the_chord_for_one_caller",
                "test_parts_from_other_connections_complete_the_chord_once",
                "test_a_part_that_comes_twice_counts_once",
                "test_a_part_before_chord_start_counts",
                "test_failed_parts_carry_the_exception_record",
                "test_after_chord_done_a_late_part_is_ignored",
                "test_a_group_is_saved_restored_and_forgotten",
                "test_chord_joins_and_groups_expire",
            ),
            "rpc:// cannot join chords (Celery's rpc backend refuses them too)",
        ),
    },
}
#: Backends whose counters and leases expire by a ``clock`` they are given (the others, by
#: their server's clock).
TAKES_CLOCK = {"memory", "sqlite"}

MakeBroker = Callable[..., Awaitable[Broker]]
MakeBackend = Callable[..., Awaitable[ResultBackend]]


@pytest.fixture(params=sorted(BROKERS))
async def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBroker]:
    """A factory of connected brokers that share one store; all are closed at the end."""
    transport = BROKERS[request.param]
    transport.require()
    store = transport.store(Corner(tmp_path), "broker")
    cls = transport.broker
    assert cls is not None
    made: list[Broker] = []

    async def make(*, max_message_size: int = 0, options: dict[str, Any] | None = None) -> Broker:
        broker = cls(
            store.url,
            max_message_size=max_message_size,
            options={**store.options, **(options or {})},
            queue_max_priority=transport.max_priority,
        )
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.close()
    store.clean()
    declared = {name for b in made if isinstance(b, AmqpBroker) for name in b.declared}
    if declared:
        await delete_amqp_queues(declared)


@pytest.fixture
async def broker(make_broker: MakeBroker) -> Broker:
    return await make_broker()


@pytest.fixture(params=sorted(BACKENDS))
async def make_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeBackend]:
    """A factory of connected result backends sharing one store; all closed at the end."""
    transport = BACKENDS[request.param]
    transport.require()
    store = transport.store(Corner(tmp_path), "backend")
    cls = STAND_INS.get(transport.name, transport.backend)
    assert cls is not None
    made: list[ResultBackend] = []

    async def make(*, options: dict[str, Any] | None = None, **settings: Any) -> ResultBackend:
        backend = cls(store.url, options={**store.options, **(options or {})}, **settings)
        if isinstance(backend, _RpcToTheFirst) and made:
            backend.caller = made[0]  # type: ignore[assignment]
        await backend.connect()
        made.append(backend)
        return backend

    yield make
    for backend in reversed(made):
        await backend.close()
    store.clean()


@pytest.fixture
async def backend(make_backend: MakeBackend) -> ResultBackend:
    return await make_backend()


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses, so tests could share one server."""
    return f"q-{uuid.uuid4().hex}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the pairs of (contract test, backend) listed in ``NOT_FOR``."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("make_backend") if callspec else None
        name = getattr(item, "originalname", item.name)
        (dropped if name in NOT_FOR.get(backend, {}) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
