"""Poison messages, and a campaign that feeds them to a running worker between good tasks.

The fuzz tests (``tests/*/test_*_fuzz_worker.py``) and the long campaign
(``scripts/poison_campaign.py``) share this module. A campaign:

1. starts a worker in this process on the transport under test;
2. sends good tasks and injects poison messages in turns, while the worker runs;
3. waits until every message is accounted for, and checks that

   - the worker is still running;
   - every good task ran exactly once;
   - every poison message was either dead-lettered with a reason, or turned out to be a valid
     message after all (a mutation can produce one) and was settled as any message is: run
     (at most once), acknowledged unrun (expired), or deferred (an ETA);
   - nothing is left unaccounted: the queue holds only what was deferred.

Poison comes at two levels, as a peer could send it:

- **envelopes** (:func:`poison_envelopes`): what a transport carries besides the body (headers,
  properties, content type and encoding), filled with wrong types, unknown keys, kombu type
  markers that do not decode, bad text, and bodies that are not what they claim;
- **raw payloads** (:func:`poison_payloads`): the bytes a transport stores (a Redis list
  element, an SQLite row's envelope): arbitrary bytes, JSON of every shape, and byte-level
  mutations of a valid payload (bytes flipped, cut, ``\\xff`` inserted).

Every poison message is a mutation of a call to :data:`MARK_TASK` with its own argument, so one
that is still valid runs the same task, and the campaign can tell good runs from the rest.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from celeriac import Celery
from celeriac.protocol.envelope import Envelope
from celeriac.protocol.message import STANDARD_HEADERS, build_task_message
from celeriac.transports.broker import Broker, Delivery
from celeriac.worker.worker import Worker

#: The task every good and poison message calls.
MARK_TASK = "poison.mark"
T = TypeVar("T")

# -- strategies ----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
#: kombu's type markers, with values that may or may not decode.
_markers = st.fixed_dictionaries(
    {
        "__type__": st.sampled_from(["datetime", "date", "time", "uuid", "decimal", "bytes", "x"]),
        "__value__": _scalars | st.sampled_from(["yesterday", "", "2026-13-45", "not-a-uuid"]),
    }
)
json_values = st.recursive(
    _scalars | _markers,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_header_keys = st.sampled_from(STANDARD_HEADERS) | st.text(max_size=8)
_property_keys = st.sampled_from(
    ["priority", "reply_to", "correlation_id", "delivery_tag", "delivery_info", "body_encoding"]
) | st.text(max_size=8)
_content_types = st.sampled_from(
    ["application/json", "application/x-msgpack", "application/x-python-serialize", "text/plain"]
) | st.text(max_size=10)
_content_encodings = st.sampled_from(["utf-8", "binary", "latin-1", "utf-16", "nope", ""])
_bodies = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.just(b'[["x"], {}, {"callbacks": 1}]')
    | st.just(b"\xff\xfe[]")
)


def good_envelope(marker: str, **options: Any) -> Envelope:
    """A valid call of :data:`MARK_TASK` with ``marker`` as its argument."""
    return build_task_message(MARK_TASK, f"{marker}-{uuid.uuid4().hex}", [marker], **options)


@st.composite
def poison_envelopes(draw: st.DrawFn) -> Envelope:
    """A call of :data:`MARK_TASK` with one to three parts replaced by something wrong."""
    base = good_envelope("poison")
    headers, properties = dict(base.headers), dict(base.properties)
    body, content_type, encoding = base.body, base.content_type, base.content_encoding
    for part in draw(
        st.lists(
            st.sampled_from(["header", "headers", "property", "body", "type", "encoding"]),
            min_size=1,
            max_size=3,
        )
    ):
        if part == "header":
            headers[draw(_header_keys)] = draw(json_values)
        elif part == "headers":
            headers = draw(st.dictionaries(_header_keys, json_values, max_size=5))
        elif part == "property":
            properties[draw(_property_keys)] = draw(json_values)
        elif part == "body":
            body = draw(_bodies)
        elif part == "type":
            content_type = draw(_content_types)
        else:
            encoding = draw(_content_encodings)
    return Envelope(body, content_type, encoding, headers, properties)


def poison_payloads(valid: bytes) -> st.SearchStrategy[bytes]:
    """Raw payloads a transport stores: arbitrary bytes, JSON of any shape, and ``valid``
    (a well-formed payload of the transport) with a few bytes changed."""
    return (
        st.binary(max_size=80)
        | json_values.map(lambda v: json.dumps(v).encode())
        | json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8"))
        | _mutations(valid)
    )


@st.composite
def _mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        how = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if how == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif how == "insert":
            data[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b'"', b"}", b"\\"]))
        else:
            del data[at:]
    return bytes(data)


def draw_many(strategy: st.SearchStrategy[T], count: int, seed: int | None = None) -> list[T]:
    """``count`` values of ``strategy``, drawn by hypothesis (its generation, not its
    shrinking, which would rerun a whole campaign per step: a failed campaign reports its
    tally instead)."""
    found: list[T] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        found.append(value)

    if seed is not None:
        collect = hypothesis_seed(seed)(collect)
    collect()
    return found


# -- the campaign --------------------------------------------------------------------------


@dataclass
class Tally:
    """What the worker did with the campaign's messages."""

    runs: Counter[str] = field(default_factory=Counter)  # marker -> times MARK_TASK ran
    acks: int = 0
    defers: int = 0
    requeues: int = 0
    dead_before: int = 0
    dead_after: int = 0

    @property
    def dead(self) -> int:
        return self.dead_after - self.dead_before

    def poison_accounted(self, good: set[str]) -> int:
        """Poison messages settled so far: dead-lettered, or valid after all and run,
        acknowledged unrun, or deferred."""
        unrun_acks = self.acks - sum(self.runs.values())
        poison_runs = sum(n for marker, n in self.runs.items() if marker not in good)
        return self.dead + poison_runs + unrun_acks + self.defers


def mark_app(name: str, **options: Any) -> tuple[Celery, Tally]:
    """An app whose :data:`MARK_TASK` counts its runs in the returned tally."""
    app = Celery(name, **options)
    tally = Tally()

    @app.task(name=MARK_TASK, ignore_result=True)
    async def mark(*args: Any, **kwargs: Any) -> None:
        tally.runs[str(args[0]) if args else "<no argument>"] += 1

    return app, tally


def _count_settles(broker: Broker, tally: Tally) -> None:
    """Count the worker's acks, defers and requeues (dead letters are counted by the
    broker itself, including those it makes before a message becomes a delivery)."""
    ack, defer, requeue = broker.ack, broker.defer, broker.requeue

    async def counted_ack(delivery: Delivery) -> None:
        tally.acks += 1
        await ack(delivery)

    async def counted_defer(delivery: Delivery, eta: float) -> None:
        tally.defers += 1
        await defer(delivery, eta)

    async def counted_requeue(delivery: Delivery) -> None:
        tally.requeues += 1
        await requeue(delivery)

    broker.ack = counted_ack  # type: ignore[method-assign]
    broker.defer = counted_defer  # type: ignore[method-assign]
    broker.requeue = counted_requeue  # type: ignore[method-assign]


async def run_campaign(
    app: Celery,
    tally: Tally,
    poison: Sequence[T],
    inject: Callable[[Broker, Sequence[T]], Awaitable[None]],
    *,
    queue: str,
    good_per_turn: int = 5,
    turn: int = 20,
    timeout: float = 60.0,
) -> None:
    """Feed ``poison`` to a running worker, ``turn`` at a time through ``inject``, with
    ``good_per_turn`` good tasks before each turn; then check the invariants of the module
    docstring. Raises AssertionError with the tally when one does not hold."""
    mark = app.tasks[MARK_TASK]
    good: set[str] = set()
    async with app.setup():
        broker = (await app.connection()).broker
        tally.dead_before = await broker.dead_letter_count()
        _count_settles(broker, tally)
        worker = Worker(app, queues=[queue], concurrency=20)
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            for start in range(0, len(poison) + turn, turn):  # good tasks last, too
                for n in range(good_per_turn):
                    marker = f"good-{start}-{n}"
                    good.add(marker)
                    await mark.apply_async((marker,), queue=queue)
                if start < len(poison):
                    await inject(broker, poison[start : start + turn])
            await _until_accounted(broker, tally, good, len(poison), running, timeout)
            # Read before the stop: a worker closes its app's connections when it ends.
            sizes = await _once_settled(broker, queue, tally, timeout)
            letters = await broker.dead_letters(limit=tally.dead)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
    assert all(tally.runs[marker] == 1 for marker in good), (
        f"good tasks not run exactly once: {[m for m in good if tally.runs[m] != 1]}"
    )
    assert tally.poison_accounted(good) == len(poison), f"unaccounted poison: {tally}"
    assert tally.requeues == 0, f"messages went back to the queue: {tally}"
    assert sizes.get(queue, 0) == tally.defers, f"left in {queue}: {sizes}, {tally}"
    assert all(letter.reason for letter in letters), "a dead letter without a reason"


async def _once_settled(broker: Broker, queue: str, tally: Tally, timeout: float) -> dict[str, int]:
    """The queue's sizes once only deferred messages are left in it, or as they are after
    ``timeout``: a task is counted as run before its ack is written (the last acks of a
    campaign may still be on their way when every task has run)."""
    deadline = time.monotonic() + timeout
    while True:
        sizes = await broker.queue_sizes([queue])
        if sizes.get(queue, 0) == tally.defers or time.monotonic() > deadline:
            return sizes
        await asyncio.sleep(0.05)  # polling the broker's counters, not a synchronisation


async def _until_accounted(
    broker: Broker,
    tally: Tally,
    good: set[str],
    poison: int,
    running: asyncio.Task[None],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if running.done():
            running.result()  # raises the worker's error
            raise AssertionError("the worker stopped")
        tally.dead_after = await broker.dead_letter_count()
        done = all(tally.runs[marker] for marker in good)
        if done and tally.poison_accounted(good) >= poison:
            return
        if time.monotonic() > deadline:
            missing = sorted(m for m in good if not tally.runs[m])[:10]
            raise AssertionError(
                f"not accounted for within {timeout} s: good tasks not run {missing}; {tally};"
                f" poison {poison}"
            )
        await asyncio.sleep(0.05)  # polling the broker's counters, not a synchronisation
