"""A mixed fleet: a Celery worker and a celeriac worker run the steps of one canvas, sent by
either client.

Both workers consume the peers' default queue; each also consumes a queue of its own
(``celery_only``, ``celeriac_only``). A step routed to one of these (``.set(queue=...)``, which
both the clients and the workers that publish later steps honour) is run by that kind of
worker, so a test can say which side runs which step; a step left unrouted goes to the
default queue, where either may take it. ``interop.add_noted`` leaves a line naming the side
that ran it in a marker file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from interop.canvas_clients import Client, closed, configured
from interop.harness import InteropRun, WorkerProcess
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20
CHAIN_STEPS = 6
CHORD_SIZE = 10


@dataclass
class Fleet:
    """The module's two workers and the queues only one of them consumes."""

    celery_only: str
    celeriac_only: str
    celery: WorkerProcess
    celeriac: WorkerProcess

    def queue_of(self, side: str) -> str:
        return self.celery_only if side == "celery" else self.celeriac_only


@pytest.fixture(scope="module")
def fleet(interop: InteropRun) -> Fleet:
    celery_only, celeriac_only = interop.queue(), interop.queue()
    return Fleet(
        celery_only,
        celeriac_only,
        interop.start_celery_worker(
            [interop.default_queue, celery_only], "--pool=threads", "-c", "4"
        ),
        interop.start_celeriac_worker([interop.default_queue, celeriac_only]),
    )


@pytest.fixture(scope="module")
def clients(interop: InteropRun, fleet: Fleet) -> Iterator[dict[str, Client]]:
    """Both peers, configured for this run, as clients."""
    yield {side: configured(side) for side in ("celery", "celeriac")}
    for side in ("celery", "celeriac"):
        closed(side)


@pytest.fixture(params=["celery", "celeriac"])
def client(request: pytest.FixtureRequest, clients: dict[str, Client]) -> Client:
    return clients[request.param]


def _lines(path: Path, count: int) -> list[str]:
    """The lines tasks wrote to marker ``path``, once there are ``count``."""
    return wait_until(
        lambda: path.exists() and len(text := path.read_text().splitlines()) >= count and text,
        what=f"{count} lines in {path.name}",
    )


def _side(index: int) -> str:
    return "celery" if index % 2 == 0 else "celeriac"


def test_a_chain_whose_steps_alternate_between_the_two_kinds_of_worker(
    interop: InteropRun, fleet: Fleet, client: Client
) -> None:
    name, add_noted = interop.marker(), client.peer.add_noted
    steps = [add_noted.s(1, 1, name).set(queue=fleet.queue_of(_side(0)))]
    steps += [
        add_noted.s(i, name).set(queue=fleet.queue_of(_side(i))) for i in range(1, CHAIN_STEPS)
    ]
    result = client.chain(*steps).apply_async()
    assert result.get(timeout=TIMEOUT) == 2 + sum(range(1, CHAIN_STEPS))
    # in order, each step on the side it was routed to, given the previous step's result
    expected, total = [f"{_side(0)} 1 1"], 2
    for i in range(1, CHAIN_STEPS):
        expected.append(f"{_side(i)} {total} {i}")
        total += i
    assert _lines(interop.marks / name, CHAIN_STEPS) == expected


def test_a_chord_whose_header_is_split_between_the_two_kinds_of_worker(
    interop: InteropRun, fleet: Fleet, client: Client
) -> None:
    """Parts from both sides join in one chord; the body (unrouted) runs on either."""
    name, peer = interop.marker(), client.peer
    header = [
        peer.add_noted.s(i, i, name).set(queue=fleet.queue_of(_side(i))) for i in range(CHORD_SIZE)
    ]
    # a chain body whose last step runs on the other side than the client
    other = "celeriac" if client.name == "celery" else "celery"
    body = peer.tsum.s() | peer.add_noted.s(1, name).set(queue=fleet.queue_of(other))
    result = client.chord(header, body).apply_async()
    total = sum(2 * i for i in range(CHORD_SIZE))
    assert client.wait(result) == total + 1
    lines = _lines(interop.marks / name, CHORD_SIZE + 1)
    assert sorted(lines[:CHORD_SIZE]) == sorted(f"{_side(i)} {i} {i}" for i in range(CHORD_SIZE))
    assert lines[CHORD_SIZE] == f"{other} {total} 1"


def test_a_chord_on_the_shared_queue(
    interop: InteropRun, fleet: Fleet, clients: dict[str, Client]
) -> None:
    """Nothing routed: whichever worker takes a part, the chord joins once, in order."""
    name, peer = interop.marker(), clients["celeriac"].peer
    header = [peer.add_noted.s(i, 0, name) for i in range(CHORD_SIZE)]
    result = clients["celeriac"].chord(header, peer.echo.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == {"args": [list(range(CHORD_SIZE))], "kwargs": {}}
    lines = _lines(interop.marks / name, CHORD_SIZE)
    assert len(lines) == CHORD_SIZE
    assert {line.split()[0] for line in lines} <= {"celery", "celeriac"}


def test_a_header_task_failing_on_one_side_fails_the_body_joined_on_either(
    interop: InteropRun, fleet: Fleet, client: Client
) -> None:
    name, peer = interop.marker(), client.peer
    failing = str(uuid.uuid4())
    header = [peer.add_noted.s(i, i, name).set(queue=fleet.queue_of(_side(i))) for i in range(4)]
    header.append(peer.boom.s().set(task_id=failing, queue=fleet.queue_of(client.name)))
    result = client.chord(header, peer.tsum.s()).apply_async()
    with pytest.raises(client.chord_error, match=rf"Dependency {failing} raised ValueError"):
        client.wait(result)
    assert len(_lines(interop.marks / name, 4)) == 4
