"""rpc:// results between real Celery and celeriac, on RabbitMQ: each client gets the states of
the tasks it sent through its own reply queue, whichever side runs them.

A module of its own: the other interop modules read result records in Redis, which rpc://
does not keep. Here the module's run is on RabbitMQ with ``result_backend = "rpc://"`` on
both peers; a celeriac worker and a Celery worker consume a queue each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from celery import states

from interop.harness import InteropRun
from interop.peers.errors import InteropError
from services import require_redis, wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20


@pytest.fixture(scope="module")
def interop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropRun]:
    require_redis()  # the harness keeps its marks beside a Redis prefix either way
    with InteropRun("rpc", tmp_path_factory.mktemp("rpc"), "amqp", results="rpc").active() as run:
        yield run


@pytest.fixture(scope="module")
def queues(interop: InteropRun) -> dict[str, str]:
    """One queue per worker: ``celeriac`` is consumed by celeriac, ``celery`` by Celery."""
    sides = {"celeriac": interop.queue(), "celery": interop.queue()}
    interop.start_celeriac_worker([sides["celeriac"]])
    interop.start_celery_worker([sides["celery"]], "--pool=threads", "-c", "4")
    return sides


@pytest.fixture(scope="module")
def celery(interop: InteropRun, queues: dict[str, str]) -> Iterator[ModuleType]:
    from interop.peers import celery_app

    celery_app.configure()
    assert celery_app.app.conf.result_backend == "rpc://"
    yield celery_app
    celery_app.app.close()


@pytest.fixture(scope="module")
def celeriac(interop: InteropRun, queues: dict[str, str]) -> Iterator[ModuleType]:
    from interop.peers import celeriac_app

    celeriac_app.configure()
    assert celeriac_app.app.conf.effective_result_backend() == "rpc://"
    yield celeriac_app
    celeriac_app.app.close()


@pytest.mark.parametrize("client", ["celery", "celeriac"])
@pytest.mark.parametrize("worker", ["celery", "celeriac"])
def test_results_and_errors_come_back_to_the_client(
    request: pytest.FixtureRequest, queues: dict[str, str], client: str, worker: str
) -> None:
    peer: ModuleType = request.getfixturevalue(client)
    queue = queues[worker]
    assert peer.add.apply_async((2, 3), queue=queue).get(timeout=TIMEOUT) == 5
    failed = peer.fail.apply_async(("it broke", 7), queue=queue)
    with pytest.raises(InteropError) as info:
        failed.get(timeout=TIMEOUT)
    assert info.value.args == ("it broke", 7)
    assert failed.state == states.FAILURE


@pytest.mark.parametrize("worker", ["celery", "celeriac"])
def test_progress_reaches_a_celeriac_client_while_the_task_runs(
    interop: InteropRun, celeriac: ModuleType, queues: dict[str, str], worker: str
) -> None:
    name = interop.marker()
    result = celeriac.progress_then_wait.apply_async((name,), queue=queues[worker])
    wait_until(lambda: result.state == "PROGRESS", TIMEOUT, "PROGRESS")
    assert result.info == {"current": 1, "total": 2}
    (interop.marks / name).touch()
    assert result.get(timeout=TIMEOUT) == "released"
    assert result.state == states.SUCCESS


@pytest.mark.parametrize("worker", ["celery", "celeriac"])
def test_progress_reaches_a_celery_client_while_the_task_runs(
    interop: InteropRun, celery: ModuleType, queues: dict[str, str], worker: str
) -> None:
    """Celery's rpc client shows states as they come to ``get(on_message=...)`` (its
    ``.state`` stays PENDING meanwhile, whoever the worker is: Celery's own behaviour)."""
    name = interop.marker()
    result = celery.progress_then_wait.apply_async((name,), queue=queues[worker])
    seen: list[tuple[str, object]] = []

    def on_message(body: dict[str, object]) -> None:
        seen.append((str(body["status"]), body["result"]))
        if body["status"] == "PROGRESS":
            (interop.marks / name).touch()  # the task waits for this, after its PROGRESS

    assert result.get(timeout=TIMEOUT, on_message=on_message) == "released"
    assert ("PROGRESS", {"current": 1, "total": 2}) in seen
    assert seen[-1] == ("SUCCESS", "released")


def test_a_celeriac_worker_replies_in_celerys_rpc_format(
    interop: InteropRun, queues: dict[str, str]
) -> None:
    """What lands in a reply queue, read raw: correlation_id = task id, transient, no
    headers, the record as JSON, for each state."""
    replies = asyncio.run(_raw_round_trip(interop, queues["celeriac"]))
    task_id, messages = replies
    statuses = [json.loads(body)["status"] for _, body in messages]
    assert statuses[-1] == "SUCCESS"
    for properties, _ in messages:
        assert properties.correlation_id == task_id
        assert properties.delivery_mode == 1
        assert not properties.headers
        assert properties.content_type == "application/json"
    final = json.loads(messages[-1][1])
    assert (final["task_id"], final["result"]) == (task_id, 42)


async def _raw_round_trip(interop: InteropRun, queue: str) -> tuple[str, list[Any]]:
    """Send ``interop.add(20, 22)`` naming a reply queue declared with Celery's flags (which
    celeriac's own clients use too), then read what comes back."""
    import aiormq
    from aiormq import spec

    from celeriac.protocol.message import build_task_message

    url = interop.env()["INTEROP_BROKER_URL"]
    reply_to, task_id = f"reply-{uuid.uuid4()}", str(uuid.uuid4())
    envelope = build_task_message("interop.add", task_id, [20, 22], reply_to=reply_to)
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(
            reply_to, durable=True, auto_delete=True, arguments={"x-expires": 86400000}
        )
        properties = spec.Basic.Properties(
            content_type=envelope.content_type,
            content_encoding=envelope.content_encoding,
            headers=envelope.headers,
            correlation_id=task_id,
            reply_to=reply_to,
            delivery_mode=2,
        )
        await channel.basic_publish(
            envelope.body, exchange="", routing_key=queue, properties=properties
        )
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        async def receive(message: Any) -> None:
            await arrived.put((message.header.properties, message.body))

        await channel.basic_consume(reply_to, receive, no_ack=True)
        messages: list[Any] = []
        async with asyncio.timeout(TIMEOUT):
            while not messages or json.loads(messages[-1][1])["status"] != "SUCCESS":
                messages.append(await arrived.get())
    finally:
        await connection.close()
    return task_id, messages
