"""A celeriac client builds and sends canvases with its own canvas API; a real Celery worker
runs every step (the chain steps, callbacks, chord joins and bodies it publishes itself);
celeriac reads the results.

The client is ``interop.peers.celeriac_app`` (its sync API) in this process; the worker is
``celery -A interop.peers.celery_app worker`` (threads pool), started once for the module.
Canvases go to the peers' default queue: the steps a worker publishes go there too, and each
test reads only its own ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from celeriac import chain, chord, group, states
from celeriac.errors import ChordError
from interop.harness import InteropRun, WorkerProcess
from services import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20


@pytest.fixture(scope="module")
def worker(interop: InteropRun) -> WorkerProcess:
    """The module's Celery worker, consuming the default queue (and the pool)."""
    return interop.start_celery_worker(interop.pool, "--pool=threads", "-c", "4")


@pytest.fixture(scope="module")
def celeriac(interop: InteropRun, worker: WorkerProcess) -> Iterator[ModuleType]:
    """The celeriac peer module, configured for this run, as the (sync) client."""
    from interop.peers import celeriac_app

    celeriac_app.configure()
    yield celeriac_app
    celeriac_app.app.close()


def _lines(path: Path, count: int) -> list[str]:
    """The first ``count`` lines tasks write to marker ``path``, once there are that many."""
    lines = wait_until(
        lambda: path.exists() and len(text := path.read_text().splitlines()) >= count and text,
        what=f"{count} lines in {path.name}",
    )
    return sorted(lines)


# -- chains ----------------------------------------------------------------------------------


def test_chain_of_three(interop: InteropRun, celeriac: ModuleType) -> None:
    result = chain(celeriac.add.s(1, 2), celeriac.add.s(10), celeriac.mul.s(2)).apply_async()
    assert result.get(timeout=TIMEOUT) == 26
    middle, first = result.parent, result.parent.parent
    assert middle.get(timeout=TIMEOUT) == 13 and first.get(timeout=TIMEOUT) == 3
    # each step names the one before it; the first lists the next among its children
    last_record, middle_record = interop.result_record(result.id), interop.result_record(middle.id)
    assert last_record is not None and last_record["parent_id"] == middle.id
    assert middle_record is not None and middle_record["parent_id"] == first.id
    assert middle_record["children"] == [[[result.id, None], None]]
    assert first.children is not None and [c.id for c in first.children] == [middle.id]


def test_chain_with_an_immutable_step(celeriac: ModuleType) -> None:
    result = (celeriac.add.s(1, 2) | celeriac.add.si(5, 5) | celeriac.add.s(1)).apply_async()
    assert result.get(timeout=TIMEOUT) == 11
    assert result.parent.get(timeout=TIMEOUT) == 10  # 3 was not prepended


def test_a_failing_step_fails_every_later_step_and_calls_the_chains_errbacks(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    name = interop.marker()
    line = celeriac.add.s(1, 1) | celeriac.boom.s() | celeriac.add.s(1) | celeriac.mul.s(2)
    result = line.apply_async(link_error=celeriac.on_error_new.s(name))
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=TIMEOUT)
    after, failed = result.parent, result.parent.parent
    for later in (after, result):  # never ran, stored with the same exception
        with pytest.raises(ValueError, match="kaboom"):
            later.get(timeout=TIMEOUT)  # (the steps after the last are stored after it)
        record = interop.result_record(later.id)
        assert record is not None
        assert record["result"]["exc_type"] == "ValueError"
        assert record["result"]["exc_message"] == ["kaboom"]
    assert failed.state == states.FAILURE
    assert failed.parent.get(timeout=TIMEOUT) == 2
    # the errback (on every step) ran once, in the worker, for the step that failed
    assert _lines(interop.marks / name, 1) == [f"new {failed.id} ValueError kaboom"]


# -- groups ----------------------------------------------------------------------------------


def test_group_results_in_order(interop: InteropRun, celeriac: ModuleType) -> None:
    result = group(celeriac.add.s(i, i) for i in range(8)).apply_async()
    assert result.get(timeout=TIMEOUT) == [2 * i for i in range(8)]
    record = interop.result_record(result.results[3].id)
    assert record is not None and record["group_id"] == result.id


def test_group_of_chains(celeriac: ModuleType) -> None:
    result = group(
        celeriac.add.s(1, 1) | celeriac.mul.s(10),
        celeriac.add.s(3, 3),
        chain(celeriac.add.s(2, 2), celeriac.mul.s(10), celeriac.add.s(1)),
    ).apply_async()
    assert result.get(timeout=TIMEOUT) == [20, 6, 41]


# -- chords ----------------------------------------------------------------------------------


def test_chord_sums_its_header(interop: InteropRun, celeriac: ModuleType) -> None:
    result = chord((celeriac.add.s(i, i) for i in range(10)), celeriac.tsum.s()).apply_async()
    assert result.get(timeout=TIMEOUT) == 90
    record = interop.result_record(result.id)
    assert record is not None and record["status"] == states.SUCCESS


def test_chord_with_a_failing_header_fails_its_body_with_a_chord_error(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    name = interop.marker()
    failing = str(uuid.uuid4())
    header = [celeriac.add.s(1, 1), celeriac.boom.s().set(task_id=failing), celeriac.add.s(2, 2)]
    body = celeriac.tsum.s().set(link_error=[celeriac.on_error_old.s(name)])
    result = chord(header, body).apply_async()
    with pytest.raises(ChordError, match=rf"Dependency {failing} raised ValueError\('kaboom'\)"):
        result.get(timeout=TIMEOUT, follow_parents=False)
    with pytest.raises(ValueError, match="kaboom"):  # Celery's default: where it broke
        result.get(timeout=TIMEOUT)
    assert result.state == states.FAILURE
    record = interop.result_record(result.id)
    assert record is not None and record["result"]["exc_module"] == "celery.exceptions"
    # the body's errback got the body's id (old style: a task of its own)
    assert _lines(interop.marks / name, 1) == [f"old {result.id}"]


def test_chord_with_a_chain_body(celeriac: ModuleType) -> None:
    body = celeriac.tsum.s() | celeriac.mul.s(10) | celeriac.add.s(1)
    result = chord([celeriac.add.s(1, 1), celeriac.add.s(2, 2)], body).apply_async()
    assert result.get(timeout=TIMEOUT) == 61


def test_a_group_inside_a_chain_becomes_a_chord(celeriac: ModuleType) -> None:
    line = celeriac.add.s(1, 1) | group(celeriac.mul.s(2), celeriac.mul.s(3)) | celeriac.tsum.s()
    result = line.apply_async()
    assert result.get(timeout=TIMEOUT) == 10


# -- link and link_error ---------------------------------------------------------------------


def test_link_publishes_the_callback_with_the_result(celeriac: ModuleType) -> None:
    callback = celeriac.mul.s(10)
    linked = callback.freeze()
    result = celeriac.add.apply_async((2, 2), link=callback)
    assert result.get(timeout=TIMEOUT) == 4
    assert linked.get(timeout=TIMEOUT) == 40
    assert linked.parent is None or linked.parent.id == result.id


def test_link_error_calls_old_and_new_style_errbacks(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    name = interop.marker()
    errbacks = [celeriac.on_error_old.s(name), celeriac.on_error_new.s(name)]
    result = celeriac.boom.apply_async(link_error=errbacks)
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=TIMEOUT)
    assert _lines(interop.marks / name, 2) == [
        f"new {result.id} ValueError kaboom",  # in the worker, with the request
        f"old {result.id}",  # published, with the failed task's id
    ]


# -- map, starmap, chunks --------------------------------------------------------------------


def test_map_starmap_and_chunks(celeriac: ModuleType) -> None:
    mapped = celeriac.tsum.map([[1, 2], [3, 4, 5]]).apply_async()
    starmapped = celeriac.add.starmap([(1, 2), (3, 4)]).apply_async()
    chunked = celeriac.add.chunks([(i, i) for i in range(5)], 2).apply_async()
    assert mapped.get(timeout=TIMEOUT) == [3, 12]
    assert starmapped.get(timeout=TIMEOUT) == [3, 7]
    assert chunked.get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8]]


# -- more shapes -----------------------------------------------------------------------------


def test_nested_chord_and_empty_header(celeriac: ModuleType) -> None:
    inner = chord([celeriac.add.s(1, 1), celeriac.add.s(2, 2)], celeriac.tsum.s())
    outer = chord([inner, celeriac.add.s(3, 3)], celeriac.tsum.s()).apply_async()
    assert outer.get(timeout=TIMEOUT) == 12
    empty = chord([], celeriac.tsum.s()).apply_async()
    assert empty.get(timeout=TIMEOUT) == 0


def test_group_of_chords_and_a_chord_with_a_group_body(celeriac: ModuleType) -> None:
    chords = group(
        chord([celeriac.add.s(i, i) for i in range(3)], celeriac.tsum.s()),
        chord([celeriac.add.s(i, 1) for i in range(3)], celeriac.tsum.s()),
    ).apply_async()
    assert chords.get(timeout=TIMEOUT) == [6, 6]
    fanned = chord(
        [celeriac.add.s(1, 1), celeriac.add.s(2, 2)], group(celeriac.tsum.s(), celeriac.echo.s())
    ).apply_async()
    assert fanned.get(timeout=TIMEOUT) == [6, {"args": [[2, 4]], "kwargs": {}}]


def test_a_chain_failing_inside_a_chord_header_fails_the_body(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    """The header member's last step never runs: its stored FAILURE still counts as the
    chord part, so the chord completes (with a ChordError)."""
    header = [celeriac.add.s(1, 1), celeriac.add.s(1, 1) | celeriac.boom.s() | celeriac.add.s(1)]
    result = chord(header, celeriac.tsum.s()).apply_async()
    with pytest.raises(ChordError, match=r"raised ValueError\('kaboom'\)"):
        result.get(timeout=TIMEOUT, follow_parents=False)


def test_a_failing_body_calls_its_errback_and_many_links_run_as_a_group(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    name = interop.marker()
    body = celeriac.boom.s().set(link_error=[celeriac.on_error_new.s(name)])
    result = chord([celeriac.add.s(1, 1)], body).apply_async()
    with pytest.raises(ValueError, match="kaboom"):
        result.get(timeout=TIMEOUT)
    assert _lines(interop.marks / name, 1) == [f"new {result.id} ValueError kaboom"]

    first, second = celeriac.mul.s(10), celeriac.echo.s("x")
    linked = [first.freeze(), second.freeze()]
    parent = celeriac.add.apply_async((2, 2), link=[first, second])
    assert parent.get(timeout=TIMEOUT) == 4
    assert [r.get(timeout=TIMEOUT) for r in linked] == [40, {"args": [4, "x"], "kwargs": {}}]
    records = [interop.result_record(r.id) for r in linked]
    assert all(r is not None and r["group_id"] for r in records)
    assert records[0]["group_id"] == records[1]["group_id"]  # type: ignore[index]


def test_a_later_step_goes_to_its_own_queue_at_its_own_priority(
    interop: InteropRun, celeriac: ModuleType, queue: str
) -> None:
    """A priority set on a later step means the same urgency to whichever worker publishes
    it: priorities inside signature dicts are the wire's numbers (on Redis, Celery's lower
    first; celeriac's client writes them so, its worker reads them so)."""
    other = interop.queue()
    line = celeriac.whoami.si().set(queue=queue) | celeriac.whoami.si().set(queue=other, priority=7)
    result = line.apply_async()
    second = result.get(timeout=TIMEOUT)
    # (priorities as Celery numbers them: celeriac's p is 9 - p on Redis, p on RabbitMQ)
    meant = 9 - 7 if interop.transport == "redis" else 7
    assert second["queue"] == other
    assert second["priority"] == meant


def test_a_later_step_is_not_given_the_priority_of_the_step_before(
    celeriac: ModuleType, interop: InteropRun
) -> None:
    """As Celery's worker (``task_inherit_parent_priority`` is off by default), the next step
    goes out at its own priority, here the default, not at its parent message's."""
    line = celeriac.whoami.si().set(priority=7) | celeriac.whoami.si()
    result = line.apply_async()
    second, first = result.get(timeout=TIMEOUT), result.parent.get(timeout=TIMEOUT)
    assert first["priority"] == (2 if interop.transport == "redis" else 7)
    # the default: none given (None), or 0 as the publisher or the broker writes it
    assert (second["priority"] or 0) == 0


def test_a_task_that_replaces_itself_with_a_chain_or_a_group(
    interop: InteropRun, celeriac: ModuleType
) -> None:
    """``self.replace()`` in the other side's worker: the replacement runs under the
    replaced task's id, and a chain continues after it."""
    assert celeriac.replaced_by_chain.delay(4).get(timeout=TIMEOUT) == 18
    assert celeriac.replaced_by_group.delay(3).get(timeout=TIMEOUT) == [0, 2, 4]
    line = (celeriac.replaced_by_chain.s(1) | celeriac.add.s(100)).apply_async()
    assert line.get(timeout=TIMEOUT) == 112
