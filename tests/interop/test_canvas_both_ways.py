"""Canvases between the two frameworks, each way: one side's client builds and sends them,
the other side's worker runs every step (the chain steps, callbacks, chord joins and bodies
it publishes itself), and the client reads the results.

Each module run (per broker) takes each direction in turn: the Celery peer
(``interop.peers.celery_app``, Celery 5.7) as the client with ``celeriac -A
interop.peers.celeriac_app:app worker``, then celeriac's client (its sync API) with a
Celery worker (threads pool). Canvases go to the peers' default queue: the steps a worker
publishes go there too (a chain's ``apply_async(queue=...)`` routes its first task only),
and each test reads only its own ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from celeriac import states
from interop.canvas_clients import Client, closed, configured
from interop.harness import InteropRun, WorkerProcess
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20


@pytest.fixture(scope="module", params=["celery", "celeriac"])
def side(request: pytest.FixtureRequest) -> str:
    """Which framework is the client; the other one's worker runs the canvases."""
    return str(request.param)


@pytest.fixture(scope="module")
def worker(interop: InteropRun, side: str) -> Iterator[WorkerProcess]:
    """The module's worker of the other framework, consuming the default queue (and the
    pool); stopped before the other direction's, so the two never share the queue."""
    if side == "celery":
        started = interop.start_celeriac_worker(interop.pool)
    else:
        started = interop.start_celery_worker(interop.pool, "--pool=threads", "-c", "4")
    yield started
    interop.stop_worker(started)


@pytest.fixture(scope="module")
def client(interop: InteropRun, side: str, worker: WorkerProcess) -> Iterator[Client]:
    """The client side's peer, configured for this run (celeriac's: its sync API)."""
    client = configured(side)
    yield client
    closed(side)


@pytest.fixture
def peer(client: Client) -> ModuleType:
    """The client side's peer module: its tasks (the same names on both sides)."""
    return client.peer


def _lines(path: Path, count: int) -> list[str]:
    """The first ``count`` lines tasks write to marker ``path``, once there are that many."""
    lines = wait_until(
        lambda: path.exists() and len(text := path.read_text().splitlines()) >= count and text,
        what=f"{count} lines in {path.name}",
    )
    return sorted(lines)


# -- chains ----------------------------------------------------------------------------------


def test_chain_of_three(interop: InteropRun, peer: ModuleType, client: Client) -> None:
    result = client.chain(peer.add.s(1, 2), peer.add.s(10), peer.mul.s(2)).apply_async()
    assert result.get(timeout=TIMEOUT) == 26
    middle, first = result.parent, result.parent.parent
    assert middle.get(timeout=TIMEOUT) == 13 and first.get(timeout=TIMEOUT) == 3
    # each step names the one before it; the first lists the next among its children
    last_record, middle_record = interop.result_record(result.id), interop.result_record(middle.id)
    assert last_record is not None and last_record["parent_id"] == middle.id
    assert middle_record is not None and middle_record["parent_id"] == first.id
    assert middle_record["children"] == [[[result.id, None], None]]
    assert first.children is not None and [c.id for c in first.children] == [middle.id]


def test_chain_with_an_immutable_step(peer: ModuleType) -> None:
    result = (peer.add.s(1, 2) | peer.add.si(5, 5) | peer.add.s(1)).apply_async()
    assert result.get(timeout=TIMEOUT) == 11
    assert result.parent.get(timeout=TIMEOUT) == 10  # 3 was not prepended


def test_a_failing_step_fails_every_later_step_and_calls_the_chains_errbacks(
    interop: InteropRun, peer: ModuleType
) -> None:
    name = interop.marker()
    line = peer.add.s(1, 1) | peer.boom.s() | peer.add.s(1) | peer.mul.s(2)
    result = line.apply_async(link_error=peer.on_error_new.s(name))
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=TIMEOUT)
    after, failed = result.parent, result.parent.parent
    for later in (after, result):  # never ran, stored with the same exception
        with pytest.raises(ValueError, match="kaboom"):
            # (the steps after the last are stored after it; its parent failed already)
            later.get(timeout=TIMEOUT, follow_parents=False)
        record = interop.result_record(later.id)
        assert record is not None
        assert record["result"]["exc_type"] == "ValueError"
        assert record["result"]["exc_message"] == ["kaboom"]
    assert failed.state == states.FAILURE
    assert failed.parent.get(timeout=TIMEOUT) == 2
    # the errback (on every step) ran once, in the worker, for the step that failed
    assert _lines(interop.marks / name, 1) == [f"new {failed.id} ValueError kaboom"]


# -- groups ----------------------------------------------------------------------------------


def test_group_results_in_order(interop: InteropRun, peer: ModuleType, client: Client) -> None:
    result = client.group(peer.add.s(i, i) for i in range(8)).apply_async()
    assert result.get(timeout=TIMEOUT) == [2 * i for i in range(8)]
    record = interop.result_record(result.results[3].id)
    assert record is not None and record["group_id"] == result.id


def test_group_of_chains(peer: ModuleType, client: Client) -> None:
    result = client.group(
        peer.add.s(1, 1) | peer.mul.s(10),
        peer.add.s(3, 3),
        client.chain(peer.add.s(2, 2), peer.mul.s(10), peer.add.s(1)),
    ).apply_async()
    assert result.get(timeout=TIMEOUT) == [20, 6, 41]


# -- chords ----------------------------------------------------------------------------------


def test_chord_sums_its_header(interop: InteropRun, peer: ModuleType, client: Client) -> None:
    result = client.chord((peer.add.s(i, i) for i in range(10)), peer.tsum.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == 90
    record = interop.result_record(result.id)
    assert record is not None and record["status"] == states.SUCCESS


def test_chord_with_a_failing_header_fails_its_body_with_a_chord_error(
    interop: InteropRun, peer: ModuleType, client: Client
) -> None:
    name = interop.marker()
    failing = str(uuid.uuid4())
    header = [peer.add.s(1, 1), peer.boom.s().set(task_id=failing), peer.add.s(2, 2)]
    body = peer.tsum.s().set(link_error=[peer.on_error_old.s(name)])
    result = client.chord(header, body).apply_async()
    # (a plain get() raises the header's own error first: both clients follow parents)
    expected = rf"Dependency {failing} raised ValueError\('kaboom'\)"
    with pytest.raises(client.chord_error, match=expected):
        result.get(timeout=TIMEOUT, follow_parents=False)
    assert result.state == states.FAILURE
    record = interop.result_record(result.id)
    assert record is not None and record["result"]["exc_module"] == "celery.exceptions"
    # the body's errback got the body's id (old style: a task of its own)
    assert _lines(interop.marks / name, 1) == [f"old {result.id}"]


def test_chord_with_a_chain_body(peer: ModuleType, client: Client) -> None:
    body = peer.tsum.s() | peer.mul.s(10) | peer.add.s(1)
    result = client.chord([peer.add.s(1, 1), peer.add.s(2, 2)], body).apply_async()
    assert result.get(timeout=TIMEOUT) == 61


def test_a_group_inside_a_chain_becomes_a_chord(peer: ModuleType, client: Client) -> None:
    line = peer.add.s(1, 1) | client.group(peer.mul.s(2), peer.mul.s(3)) | peer.tsum.s()
    result = line.apply_async()
    assert result.get(timeout=TIMEOUT) == 10


def test_a_failing_task_in_each_shape(
    interop: InteropRun, peer: ModuleType, client: Client
) -> None:
    """A group member, a step of a chain in a group, a step of a chord's chain body, a
    member of a group inside a chain (a chord there), a mapped item and a replacement,
    each failing: the failure reaches what waits on it, and the rest of the shape ends."""
    kaboom = r"kaboom"
    grouped = client.group(peer.add.s(1, 1), peer.boom.s(), peer.add.s(2, 2)).apply_async()
    chains = client.group(peer.add.s(1, 1) | peer.boom.s() | peer.mul.s(2), peer.add.s(3, 3))
    of_chains = chains.apply_async()
    chain_body = peer.tsum.s() | peer.boom.s() | peer.add.s(1)
    chord_body = client.chord([peer.add.s(1, 1), peer.add.s(2, 2)], chain_body).apply_async()
    upgraded = peer.add.s(1, 1) | client.group(peer.mul.s(2), peer.boom.s()) | peer.tsum.s()
    chained_group = upgraded.apply_async()
    mapped = peer.boom.map([[1], [2]]).apply_async()
    replaced = (peer.replaced_by_boom.s() | peer.add.s(1)).apply_async()

    with pytest.raises(ValueError, match=kaboom):
        grouped.get(timeout=TIMEOUT)
    assert grouped.join(timeout=TIMEOUT, propagate=False)[::2] == [2, 4]
    assert grouped.failed() and not grouped.successful()
    assert grouped.results[1].state == states.FAILURE

    with pytest.raises(ValueError, match=kaboom):
        of_chains.get(timeout=TIMEOUT)
    failed_line = of_chains.results[0]  # the chain's last step: never ran, stored failed
    assert failed_line.state == states.FAILURE
    assert of_chains.results[1].get(timeout=TIMEOUT) == 6

    with pytest.raises(ValueError, match=kaboom):
        client.wait(chord_body)
    # (the result's parent is the header, on both sides, even for a chain body)
    assert chord_body.parent.get(timeout=TIMEOUT) == [2, 4]
    record = interop.result_record(chord_body.id)
    assert record is not None and record["status"] == states.FAILURE

    with pytest.raises(client.chord_error, match=r"raised ValueError\('kaboom'\)"):
        client.wait(chained_group)

    with pytest.raises(ValueError, match=kaboom):
        mapped.get(timeout=TIMEOUT)

    with pytest.raises(ValueError, match=kaboom):
        client.wait(replaced)  # the step after the replacement fails with it
    assert replaced.parent.state == states.FAILURE


# -- link and link_error ---------------------------------------------------------------------


def test_link_publishes_the_callback_with_the_result(peer: ModuleType) -> None:
    callback = peer.mul.s(10)
    linked = callback.freeze()
    result = peer.add.apply_async((2, 2), link=callback)
    assert result.get(timeout=TIMEOUT) == 4
    assert linked.get(timeout=TIMEOUT) == 40
    assert linked.parent is None or linked.parent.id == result.id


def test_link_error_calls_old_and_new_style_errbacks(interop: InteropRun, peer: ModuleType) -> None:
    name = interop.marker()
    errbacks = [peer.on_error_old.s(name), peer.on_error_new.s(name)]
    result = peer.boom.apply_async(link_error=errbacks)
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=TIMEOUT)
    assert _lines(interop.marks / name, 2) == [
        f"new {result.id} ValueError kaboom",  # in the worker, with the request
        f"old {result.id}",  # published, with the failed task's id
    ]


# -- map, starmap, chunks --------------------------------------------------------------------


def test_map_starmap_and_chunks(peer: ModuleType) -> None:
    mapped = peer.tsum.map([[1, 2], [3, 4, 5]]).apply_async()
    starmapped = peer.add.starmap([(1, 2), (3, 4)]).apply_async()
    chunked = peer.add.chunks([(i, i) for i in range(5)], 2).apply_async()
    assert mapped.get(timeout=TIMEOUT) == [3, 12]
    assert starmapped.get(timeout=TIMEOUT) == [3, 7]
    assert chunked.get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8]]


# -- more shapes -----------------------------------------------------------------------------


def test_nested_chord_and_empty_header(peer: ModuleType, client: Client) -> None:
    inner = client.chord([peer.add.s(1, 1), peer.add.s(2, 2)], peer.tsum.s())
    outer = client.chord([inner, peer.add.s(3, 3)], peer.tsum.s()).apply_async()
    assert outer.get(timeout=TIMEOUT) == 12
    empty = client.chord([], peer.tsum.s()).apply_async()
    assert empty.get(timeout=TIMEOUT) == 0


def test_group_of_chords_and_a_chord_with_a_group_body(peer: ModuleType, client: Client) -> None:
    chords = client.group(
        client.chord([peer.add.s(i, i) for i in range(3)], peer.tsum.s()),
        client.chord([peer.add.s(i, 1) for i in range(3)], peer.tsum.s()),
    ).apply_async()
    assert chords.get(timeout=TIMEOUT) == [6, 6]
    fanned = client.chord(
        [peer.add.s(1, 1), peer.add.s(2, 2)], client.group(peer.tsum.s(), peer.echo.s())
    ).apply_async()
    assert fanned.get(timeout=TIMEOUT) == [6, {"args": [[2, 4]], "kwargs": {}}]


def test_a_chain_failing_inside_a_chord_header_fails_the_body(
    interop: InteropRun, peer: ModuleType, client: Client
) -> None:
    """The header member's last step never runs: its stored FAILURE still counts as the
    chord part, so the chord completes (with a ChordError)."""
    header = [peer.add.s(1, 1), peer.add.s(1, 1) | peer.boom.s() | peer.add.s(1)]
    result = client.chord(header, peer.tsum.s()).apply_async()
    with pytest.raises(client.chord_error, match=r"raised ValueError\('kaboom'\)"):
        result.get(timeout=TIMEOUT, follow_parents=False)


def test_a_failing_body_calls_its_errback_and_many_links_run_as_a_group(
    interop: InteropRun, peer: ModuleType, client: Client
) -> None:
    name = interop.marker()
    body = peer.boom.s().set(link_error=[peer.on_error_new.s(name)])
    result = client.chord([peer.add.s(1, 1)], body).apply_async()
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=TIMEOUT)
    assert _lines(interop.marks / name, 1) == [f"new {result.id} ValueError kaboom"]

    first, second = peer.mul.s(10), peer.echo.s("x")
    linked = [first.freeze(), second.freeze()]
    parent = peer.add.apply_async((2, 2), link=[first, second])
    assert parent.get(timeout=TIMEOUT) == 4
    assert [r.get(timeout=TIMEOUT) for r in linked] == [40, {"args": [4, "x"], "kwargs": {}}]
    records = [interop.result_record(r.id) for r in linked]
    assert all(r is not None and r["group_id"] for r in records)
    assert records[0]["group_id"] == records[1]["group_id"]  # type: ignore[index]


def test_a_later_step_goes_to_its_own_queue_at_its_own_priority(
    interop: InteropRun, peer: ModuleType, queue: str
) -> None:
    """A priority set on a later step means the same urgency to whichever worker publishes
    it: priorities inside signature dicts are the wire's numbers (on Redis, Celery's lower
    first; celeriac's client writes them so, its worker reads them so)."""
    other = interop.queue()
    line = peer.whoami.si().set(queue=queue) | peer.whoami.si().set(queue=other, priority=7)
    result = line.apply_async()
    second = result.get(timeout=TIMEOUT)
    # (priorities as celeriac numbers them: Celery's p is 9 - p on Redis, p on RabbitMQ)
    meant = 9 - 7 if interop.transport == "redis" else 7
    assert second["queue"] == other
    assert second["priority"] == meant


def test_a_later_step_is_not_given_the_priority_of_the_step_before(
    peer: ModuleType, interop: InteropRun
) -> None:
    """As Celery's worker (``task_inherit_parent_priority`` is off by default), the next step
    goes out at its own priority, here the default, not at its parent message's."""
    line = peer.whoami.si().set(priority=7) | peer.whoami.si()
    result = line.apply_async()
    second, first = result.get(timeout=TIMEOUT), result.parent.get(timeout=TIMEOUT)
    assert first["priority"] == (2 if interop.transport == "redis" else 7)
    # the default: none given (None), or 0 as the publisher or the broker writes it
    assert (second["priority"] or 0) == 0


def test_a_replacement_and_the_steps_it_inherits_keep_their_priorities(
    interop: InteropRun, peer: ModuleType
) -> None:
    """The replacing worker's own signature holds its numbers; the rest of the chain it
    inherits came in the message, in the wire's: each step runs at the urgency its author
    meant (on Redis the two differ, and converting the inherited steps again would turn a
    2 back into a 7)."""
    line = peer.replaced_by_urgent_whoami.si() | peer.whoami.si().set(priority=7)
    result = line.apply_async()
    second, first = result.get(timeout=TIMEOUT), result.parent.get(timeout=TIMEOUT)
    assert first["priority"] == 4  # set by the peer, read by the peer
    assert second["priority"] == (9 - 7 if interop.transport == "redis" else 7)


def test_a_task_that_replaces_itself_with_a_chain_or_a_group(
    interop: InteropRun, peer: ModuleType
) -> None:
    """``self.replace()`` in the other side's worker: the replacement runs under the
    replaced task's id, and a chain continues after it."""
    assert peer.replaced_by_chain.delay(4).get(timeout=TIMEOUT) == 18
    assert peer.replaced_by_group.delay(3).get(timeout=TIMEOUT) == [0, 2, 4]
    line = (peer.replaced_by_chain.s(1) | peer.add.s(100)).apply_async()
    assert line.get(timeout=TIMEOUT) == 112
