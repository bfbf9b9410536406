"""Bad input never stops the worker: random envelopes all end in dead letters, good work runs."""

from __future__ import annotations

import asyncio
import pickle
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeriac import Celery
from celeriac.protocol.envelope import Envelope
from celeriac.transports.memory.broker import MemoryBroker
from celeriac.worker.worker import Worker

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
headers = st.dictionaries(
    st.sampled_from(["task", "id", "retries", "eta", "expires", "timelimit", "argsrepr", "x"])
    | st.text(max_size=8),
    json_values,
    max_size=6,
)
envelopes = st.builds(
    Envelope,
    body=st.binary(max_size=200),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-msgpack",
            "application/x-python-serialize",
            "text/plain",
            "",
        ]
    ),
    content_encoding=st.sampled_from(["utf-8", "binary", "latin-1", "nope"]),
    headers=headers,
    properties=st.dictionaries(
        st.sampled_from(["priority", "reply_to", "correlation_id"]), json_values, max_size=3
    ),
)


async def scenario(garbage: list[Envelope], app_options: dict[str, Any]) -> tuple[Any, int]:
    app = Celery("fuzz", broker=f"memory://{uuid.uuid4().hex}", **app_options)

    @app.task(name="fuzz.registered_only_here_echo")
    async def echo(value: int) -> int:
        return value

    async with app.setup():
        broker = (await app.connection()).broker
        # Another producer (Celery, say) with no size limit of its own.
        producer = MemoryBroker(broker.url)
        await producer.connect()
        for envelope in garbage:
            await producer.publish("celery", envelope)
        await producer.close()
        good = await echo.delay(7)
        worker = Worker(app, concurrency=4)
        running = asyncio.get_running_loop().create_task(worker.run())
        value = await good.get(timeout=10)
        # The garbage was queued first, so it was all taken before the good task; a graceful
        # stop waits for whatever is still being settled.
        worker.stop()
        await asyncio.wait_for(running, 10)
    async with app.setup():
        dead = await (await app.connection()).broker.dead_letter_count()
    return value, dead


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(envelopes, min_size=1, max_size=15))
def test_random_envelopes_go_to_dead_letters_and_good_work_runs(garbage: list[Envelope]) -> None:
    value, dead = asyncio.run(scenario(garbage, {}))
    assert value == 7
    assert dead == len(garbage)


def test_oversized_and_disallowed_content_are_dead_lettered() -> None:
    big = Envelope(
        b"[[], {}, {}]" + b" " * 2000,
        "application/json",
        "utf-8",
        {"task": "fuzz.registered_only_here_echo", "id": "big"},
    )
    pickled = Envelope(
        pickle.dumps([[1], {}, {}]),
        "application/x-python-serialize",
        "binary",
        {"task": "fuzz.registered_only_here_echo", "id": "pickled"},
    )
    value, dead = asyncio.run(scenario([big, pickled], {"broker_max_message_size": 1000}))
    assert (value, dead) == (7, 2)
