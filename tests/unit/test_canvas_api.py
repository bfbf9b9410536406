"""Celery's canvas API (``celeriac.canvas``): signatures in Celery's dict form, ``|``, and what
applying a chain, group, chord, map or chunks publishes, read back from a memory broker.

The messages' canvas fields themselves are ``protocol.canvas``'s (``test_canvas_protocol``
checks those against Celery); here: that the user's API builds the same dicts as Celery's
(its JSON, compared with Celery 5.7's own canvas classes), returns the right results, and
publishes through the batch path.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from celeriac import (
    AsyncResult,
    Celery,
    GroupResult,
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    xmap,
    xstarmap,
)
from celeriac.canvas import publish as canvas_publish
from celeriac.connections import Connection
from celeriac.errors import ChordsNotSupported, ConfigurationError
from celeriac.protocol import canvas
from celeriac.protocol.message import build_task_message
from celeriac.transports.broker import PublishRequest
from inprocess import memory_app, run_worker


def make_app(name: str, **settings: Any) -> Celery:
    app = memory_app(name)
    app.conf.update(settings)

    @app.task(name="rapp.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rapp.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="rapp.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="rapp.routed", queue="fast", priority=7)
    def routed(x: int) -> int:
        return x

    return app


@dataclass
class Message:
    queue: str
    priority: int
    headers: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]


@dataclass
class Published:
    """What the broker of one connection was handed, ``publish_many`` call by call."""

    calls: list[list[PublishRequest]] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        found = []
        for call in self.calls:
            for request in call:
                args, kwargs, embed = json.loads(request.envelope.body)
                headers = request.envelope.headers
                found.append(Message(request.queue, request.priority, headers, args, kwargs, embed))
        return found


@pytest.fixture
async def app() -> AsyncIterator[Celery]:
    app = make_app("canvas-api")
    async with app.setup():
        yield app


async def recording(app: Celery, monkeypatch: pytest.MonkeyPatch) -> Published:
    conn = await app.connection()
    published = Published()
    publish_many = conn.broker.publish_many

    async def record(requests: Sequence[PublishRequest]) -> None:
        published.calls.append(list(requests))
        await publish_many(requests)

    monkeypatch.setattr(conn.broker, "publish_many", record)
    return published


# -- dict forms -----------------------------------------------------------------------------------


def test_each_kind_is_its_protocol_dict() -> None:
    app = make_app("dicts")
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]
    a, b = canvas.signature("rapp.add", (1, 2)), canvas.signature("rapp.add", (3,))
    assert add.s(1, 2) == a
    assert add.si(1, 2) == canvas.signature("rapp.add", (1, 2), immutable=True)
    assert add.s(1, y=2) == canvas.signature("rapp.add", (1,), {"y": 2})
    assert add.signature((1, 2), countdown=5) == canvas.signature(
        "rapp.add", (1, 2), None, {"countdown": 5}
    )
    assert add.s(1, 2) | add.s(3) == canvas.chain_dict([a, b])
    assert chain(add.s(1, 2), add.s(3)) == canvas.chain_dict([a, b])
    assert chain([add.s(1, 2), add.s(3)]) == canvas.chain_dict([a, b])
    assert group(add.s(1, 2), add.s(3)) == canvas.group_dict([a, b])
    assert group(s for s in [add.s(1, 2), add.s(3)]) == canvas.group_dict([a, b])
    body = canvas.signature("rapp.tsum")
    expected = canvas.chord_dict(canvas.group_dict([a, b]), body)
    expected["kwargs"]["header"] = [a, b]  # chord() keeps a list, as Celery's does
    assert chord([add.s(1, 2), add.s(3)], tsum.s()) == expected
    assert chord(group(add.s(1, 2), add.s(3)), tsum.s()) == expected
    assert add.map([1, 2]) == canvas.xmap_dict(canvas.signature("rapp.add"), [1, 2])
    assert add.starmap([(1, 2)]) == canvas.xstarmap_dict(canvas.signature("rapp.add"), [(1, 2)])
    assert add.chunks([(1, 2)] * 3, 2) == canvas.chunks_dict(
        canvas.signature("rapp.add"), [(1, 2)] * 3, 2
    )
    assert app.signature("rapp.add", (1, 2)) == a
    assert signature("rapp.add", args=(1, 2)) == a


@dataclass
class Kit:
    """One side's way to build canvases: ``s("add", 1, 2)`` and the composite classes."""

    s: Any
    chain: Any
    group: Any
    chord: Any


def celery_and_celeriac() -> list[tuple[Any, Any]]:
    """The same canvases built with Celery 5.7's classes and with celeriac's."""
    import celery  # type: ignore[import-untyped]

    capp = celery.Celery("peer", set_as_current=False)
    app = make_app("peer")
    theirs = Kit(
        lambda name, *args, **options: capp.signature(f"rapp.{name}", args, **options),
        celery.chain,
        celery.group,
        celery.chord,
    )
    ours = Kit(
        lambda name, *args, **options: app.signature(f"rapp.{name}", args, **options),
        chain,
        group,
        chord,
    )
    builds = [
        lambda k: k.s("add", 1, 2),
        lambda k: k.s("add", 1, 2, countdown=3).set(queue="q"),
        lambda k: k.s("add", 1, 2) | k.s("add", 3) | k.s("mul", 4),
        lambda k: k.chain(k.s("add", 1, 2), k.s("add", 3)),
        lambda k: k.chain(k.s("add", 1, 2)) | k.chain(k.s("mul", 2), k.s("mul", 3)),
        lambda k: k.group(k.s("add", 1, 1), k.s("add", 2, 2)),
        lambda k: k.group(k.s("add", 1, 1), k.s("add", 2, 2)) | k.s("tsum"),
        lambda k: k.chord([k.s("add", 1, 1)], k.s("tsum")) | k.s("mul", 2),
        lambda k: k.s("add", 1, 1) | k.group(k.s("mul", 2), k.s("mul", 3)) | k.s("tsum"),
        lambda k: k.chain(k.s("add", 1, 1), k.group(k.s("mul", 2), k.s("mul", 3)), k.s("tsum")),
        lambda k: k.s("add", 1, 1) | k.group(k.s("mul", 2)),
        lambda k: k.chord(k.group(k.s("add", 1, 1), k.s("add", 2, 2)), k.s("tsum")),
        lambda k: k.s("add", 1, 1).on_error(k.s("tsum")),
        lambda k: _linked(k.s("add", 1, 1), k.s("mul", 2)),
        lambda k: k.s("add", 1, 1, immutable=True) | k.s("mul", 2),
    ]
    return [(build(theirs), build(ours)) for build in builds]


def _linked(sig: Any, callback: Any) -> Any:
    sig.link(callback)
    return sig


def test_the_json_is_celerys() -> None:
    for theirs, ours in celery_and_celeriac():
        assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs)), ours


def test_map_starmap_and_chunks_json_is_celerys_but_for_their_type() -> None:
    """Celery 5.7 writes ``subtask_type: null`` for these (its constructors leave it
    unset, though ``from_dict`` knows "xmap", "xstarmap" and "chunks"); protocol.canvas
    names the type, which both read back as the right class. Everything else is equal."""
    import celery

    capp = celery.Celery("peer", set_as_current=False)

    @capp.task(name="rapp.add", shared=False)  # not on every Celery app of the process
    def add_(x: int, y: int) -> int:
        return x + y

    app = make_app("peer-maps")
    cadd, add = capp.tasks["rapp.add"], app.tasks["rapp.add"]
    pairs = [(1, 2), (3, 4), (5, 6)]
    for theirs, ours, kind in [
        (cadd.map([1, 2]), add.map([1, 2]), "xmap"),
        (cadd.starmap(pairs), add.starmap(pairs), "xstarmap"),
        (cadd.chunks(pairs, 2), add.chunks(pairs, 2), "chunks"),
    ]:
        expected = {**json.loads(json.dumps(theirs)), "subtask_type": kind}
        assert json.loads(json.dumps(ours)) == expected
        assert type(celery.Signature.from_dict(json.loads(json.dumps(ours)))).__name__ == kind


def test_a_json_round_trip_rebuilds_each_class() -> None:
    app = make_app("round-trip")
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]
    for sig, kind in [
        (add.s(1, 2), Signature),
        (add.s(1, 2) | add.s(3), chain.__mro__[1]),  # chain() composes into a _chain
        (group(add.s(1, 2), add.s(3)), group),
        (chord([add.s(1, 1)], tsum.s()), chord),
        (add.map([1]), xmap),
        (add.starmap([(1, 2)]), xstarmap),
        (add.chunks([(1, 2)], 1), chunks),
    ]:
        for rebuilt in (
            Signature.from_dict(json.loads(json.dumps(sig))),
            signature(json.loads(json.dumps(sig))),
            maybe_signature(json.loads(json.dumps(sig))),
            pickle.loads(pickle.dumps(sig)),
        ):
            assert type(rebuilt) is kind and rebuilt == sig
    rebuilt_chord = Signature.from_dict(json.loads(json.dumps(chord([add.s(1, 1)], tsum.s()))))
    assert isinstance(rebuilt_chord, chord) and type(rebuilt_chord.body) is Signature
    assert [type(t) for t in rebuilt_chord.tasks] == [Signature]  # a list, as in Celery
    frozen = chord([add.s(1, 1)], tsum.s())
    header_id = frozen.freeze().parent.id  # type: ignore[union-attr]
    rebuilt_frozen = Signature.from_dict(json.loads(json.dumps(frozen)))
    assert isinstance(rebuilt_frozen, chord) and isinstance(rebuilt_frozen.tasks, group)
    assert rebuilt_frozen.tasks.id == header_id  # a frozen header keeps its group id


# -- composing and changing -----------------------------------------------------------------------


def test_pipes_compose_as_celery() -> None:
    app = make_app("pipes")
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]
    two = add.s(1, 1) | add.s(2)
    assert two.subtask_type == "chain" and [t.args for t in two.tasks] == [[1, 1], [2]]
    longer = two | add.s(3)
    assert [t.args for t in longer.tasks] == [[1, 1], [2], [3]]
    assert [t.args for t in (two | (add.s(4) | add.s(5))).tasks] == [[1, 1], [2], [4], [5]]
    upgraded = group(add.s(1, 1), add.s(2, 2)) | tsum.s()
    assert isinstance(upgraded, chord) and upgraded.body.task == "rapp.tsum"
    tail = add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s()
    assert [t.subtask_type for t in tail.tasks] == [None, "chord"]
    into_body = chord([add.s(1, 1)], tsum.s()) | add.s(10)
    assert isinstance(into_body, chord) and into_body.body.subtask_type == "chain"
    assert isinstance(chain([group(add.s(1, 1), add.s(2, 2))]), group)  # as in Celery


def test_clone_set_and_immutability() -> None:
    app = make_app("clone")
    add = app.tasks["rapp.add"]
    partial = add.s(2)
    assert partial.clone((1,)).args == [1, 2]
    assert partial.clone(kwargs={"y": 3}).kwargs == {"y": 3}
    assert partial.args == [2] and partial.kwargs == {}  # the original is left alone
    frozen_args = add.si(1, 2)
    assert frozen_args.clone((9,)).args == [1, 2]
    assert frozen_args.immutable and frozen_args.clone().immutable
    copy = partial.clone(countdown=3)
    copy.options["queue"] = "elsewhere"
    assert partial.options == {} and copy.options == {"countdown": 3, "queue": "elsewhere"}
    assert partial.set(priority=3) is partial and partial.options == {"priority": 3}
    partial.set(immutable=True)
    assert partial.immutable
    assert add.s(1).replace(args=(5,)).args == [5]
    grouped = add.s(1).set(group_id="g")
    assert grouped.clone(group_id="other").options["group_id"] == "g"  # Celery keeps it
    assert add.s(1, 2)() == 3 and add.s(2)(1) == 3  # __call__ runs the function here


def test_link_and_on_error_set_options() -> None:
    app = make_app("links")
    add, mul = app.tasks["rapp.add"], app.tasks["rapp.mul"]
    sig = add.s(1, 1)
    callback = mul.s(2)
    assert sig.link(callback) is callback
    assert sig.on_error(mul.s(3)) is sig
    assert sig.options == {"link": [mul.s(2)], "link_error": [mul.s(3)]}
    sig.link(callback)  # the same callback twice counts once
    assert sig.options["link"] == [mul.s(2)]
    members = group(add.s(1, 1), add.s(2, 2))
    members.link_error(mul.s(0))
    assert [m.options["link_error"] for m in members.tasks] == [[mul.s(0)], [mul.s(0)]]


def test_freeze_assigns_ids_in_place() -> None:
    app = make_app("freeze")
    add = app.tasks["rapp.add"]
    sig = add.s(1, 1)
    result = sig.freeze()
    assert isinstance(result, AsyncResult) and sig.id == result.id
    line = add.s(1, 1) | add.s(2) | add.s(3)
    last = line.freeze()
    assert [t.id for t in line.tasks][-1] == last.id
    assert last.parent is not None and last.parent.id == line.tasks[1].id
    members = group(add.s(1, 1), add.s(2, 2))
    grouped = members.freeze()
    assert isinstance(grouped, GroupResult)
    assert [r.id for r in grouped.results] == [t.id for t in members.tasks]
    assert [t.options["group_index"] for t in members.tasks] == [0, 1]


# -- publishing -----------------------------------------------------------------------------------


async def test_a_chain_is_one_message_carrying_the_rest_reversed(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add, mul = app.tasks["rapp.add"], app.tasks["rapp.mul"]
    result = await (add.s(1, 2) | add.s(10) | mul.s(2)).delay()
    [message] = published.messages
    assert message.headers["task"] == "rapp.add" and message.args == [1, 2]
    rest = message.embed["chain"]
    assert [(s["task"], s["args"]) for s in rest] == [("rapp.mul", [2]), ("rapp.add", [10])]
    # The result is the last step's, linked back through its parents to the first message.
    assert result.id == rest[0]["options"]["task_id"]
    assert isinstance(result.parent, AsyncResult)
    assert result.parent.id == rest[1]["options"]["task_id"]
    assert result.parent.parent is not None and result.parent.parent.id == message.headers["id"]
    assert message.headers["root_id"] == message.headers["id"]


async def test_a_group_is_one_message_per_task_and_a_group_result(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add = app.tasks["rapp.add"]
    result = await group(add.s(i, i) for i in range(3)).apply_async()
    assert isinstance(result, GroupResult)
    messages = published.messages
    assert [m.args for m in messages] == [[0, 0], [1, 1], [2, 2]]
    assert {m.headers["group"] for m in messages} == {result.id}
    assert [m.headers["group_index"] for m in messages] == [0, 1, 2]
    assert [r.id for r in result.results] == [m.headers["id"] for m in messages]
    assert len(published.calls) == 1  # one batch
    with pytest.raises(TypeError, match="Cannot add link to group: use a chord"):
        group(add.s(1, 1)).apply_async(link=add.s(2))


async def test_a_chord_sizes_its_join_then_sends_its_header(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    conn = await app.connection()
    started: list[tuple[str, int, int]] = []  # and how many messages were out by then
    chord_start = conn.backend.chord_start

    async def record_start(group_id: str, size: int, *, expires: float | None) -> None:
        started.append((group_id, size, len(published.messages)))
        await chord_start(group_id, size, expires=expires)

    monkeypatch.setattr(conn.backend, "chord_start", record_start)
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]
    result = await chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    header = result.parent
    assert isinstance(header, GroupResult)
    assert started == [(header.id, 2, 0)]
    messages = published.messages
    assert [m.headers["group"] for m in messages] == [header.id, header.id]
    assert [m.headers["group_index"] for m in messages] == [0, 1]
    body = messages[0].embed["chord"]
    assert body["task"] == "rapp.tsum"
    assert body["options"]["task_id"] == result.id and body["options"]["group_id"] == header.id
    # chord(header)(body) is the same call.
    second = await chord([add.s(3, 3)])(tsum.s())
    assert published.messages[-1].embed["chord"]["options"]["task_id"] == second.id


async def test_map_starmap_and_chunks_messages(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add = app.tasks["rapp.add"]
    await add.map([1, 2]).delay()
    await add.starmap([(1, 2), (3, 4)]).delay()
    result = await add.chunks([(i, i) for i in range(5)], 2).apply_async()
    map_message, starmap_message, *chunk_messages = published.messages
    assert map_message.headers["task"] == "celery.map"
    assert map_message.kwargs == {"task": canvas.signature("rapp.add"), "it": [1, 2]}
    assert starmap_message.headers["task"] == "celery.starmap"
    assert starmap_message.kwargs["it"] == [[1, 2], [3, 4]]
    assert [m.kwargs["it"] for m in chunk_messages] == [
        [[0, 0], [1, 1]],
        [[2, 2], [3, 3]],
        [[4, 4]],
    ]
    assert isinstance(result, GroupResult) and len(result.results) == 3
    assert {m.headers["group"] for m in chunk_messages} == {result.id}


async def test_a_group_of_ten_thousand_goes_out_in_a_few_batches(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add = app.tasks["rapp.add"]
    result = await group(add.s(i, i) for i in range(10_000)).apply_async(countdown=60)
    assert len(result.results) == 10_000
    assert len(published.calls) <= 10  # chunks of 1,000, one countdown: one ETA, one batch
    assert sum(len(call) for call in published.calls) == 10_000
    assert published.messages[-1].args == [9999, 9999]


async def test_each_message_takes_its_registered_tasks_options(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add, routed = app.tasks["rapp.add"], app.tasks["rapp.routed"]
    await group(routed.s(1), routed.s(2), add.s(1, 1), routed.s(3).set(queue="slow")).delay()
    assert [(m.queue, m.priority) for m in published.messages] == [
        ("fast", 7), ("fast", 7), ("celery", 0), ("slow", 7),
    ]  # fmt: skip
    assert len(published.calls) == 3  # consecutive messages of one queue share a batch


async def test_a_chord_on_a_store_that_cannot_join_raises_before_publishing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app("no-join", result_backend="disabled://")
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]
    async with app.setup():
        published = await recording(app, monkeypatch)
        with pytest.raises(ChordsNotSupported, match="cannot join a chord"):
            await chord([add.s(1, 1)], tsum.s()).apply_async()
        with pytest.raises(NotImplementedError):
            await (add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s()).delay()
        assert published.calls == []
        await group(add.s(1, 1)).delay()  # a group needs no join
        assert len(published.messages) == 1


async def test_before_the_app_connects_the_checks_come_with_the_publish() -> None:
    """In async code with no connection open yet, the store is known only once connected:
    the publish (and a chord's refusal) happens in the task ``await`` waits for."""
    app = make_app("not-yet", result_backend="disabled://")
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]
    refused = chord([add.s(1, 1)], tsum.s()).apply_async()
    with pytest.raises(ChordsNotSupported):
        await refused
    line = await (add.s(1, 1) | add.s(2)).delay()
    conn = await app.connection()
    assert (await conn.broker.queue_sizes(["celery"]))["celery"] == 1
    assert line.parent is not None
    await app.close()


def test_rpc_refuses_chords_in_celerys_words() -> None:
    class Rpc:
        url = "rpc://"
        joins_chords = False

    header = canvas.group_dict([canvas.signature("t"), canvas.signature("t")])
    a_chord = canvas.chord_dict(header, canvas.signature("t"))
    with pytest.raises(ChordsNotSupported) as raised:
        canvas_publish.check_chords(Rpc(), canvas.apply(a_chord))  # type: ignore[arg-type]
    assert str(raised.value) == 'The "rpc" result backend does not support chords!'
    assert isinstance(raised.value, NotImplementedError) and isinstance(
        raised.value, ConfigurationError
    )
    canvas_publish.check_chords(Rpc(), canvas.apply(header))  # type: ignore[arg-type]


async def test_apply_async_with_link_puts_the_callback_in_the_embed(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add, mul = app.tasks["rapp.add"], app.tasks["rapp.mul"]
    result = await add.apply_async((1, 2), link=mul.s(10), link_error=[mul.s(0)], task_id="t1")
    await app.send_task("rapp.add", (3, 4), link=mul.s(2))
    first, second = published.messages
    assert result.id == "t1" == first.headers["id"]
    assert first.embed["callbacks"] == [canvas.signature("rapp.mul", (10,))]
    assert first.embed["errbacks"] == [canvas.signature("rapp.mul", (0,))]
    assert second.embed["callbacks"] == [canvas.signature("rapp.mul", (2,))]
    with pytest.raises(TypeError, match=r"'link' must be a signature"):
        add.apply_async((1, 2), link="callback")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'routing_key'"):
        add.apply_async((1, 2), link=mul.s(1), routing_key="x")  # type: ignore[call-arg]


async def test_the_plain_path_builds_the_same_message_as_before(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add = app.tasks["rapp.add"]
    await add.apply_async((1, 2), task_id="plain")
    [request] = published.calls[0]
    expected = build_task_message("rapp.add", "plain", (1, 2), {})
    assert request.envelope == expected
    # The same call as a signature publishes the same message.
    await add.signature((1, 2), task_id="sig").apply_async()
    via_signature = published.calls[1][0].envelope
    assert via_signature.body == build_task_message("rapp.add", "sig", (1, 2), {}).body


def test_sync_code_blocks_until_published() -> None:
    app = make_app("sync-publish")
    add = app.tasks["rapp.add"]
    result = (add.s(1, 1) | add.s(2)).delay()
    assert isinstance(result, AsyncResult) and result.parent is not None
    grouped = group(add.s(1, 1), add.s(2, 2)).delay()
    assert isinstance(grouped, GroupResult)

    async def queued() -> int:
        conn: Connection = await app.connection()
        return (await conn.broker.queue_sizes(["celery"]))["celery"]

    from celeriac import _bridge

    assert _bridge.run(queued()) == 3
    app.close()


# -- eager ----------------------------------------------------------------------------------------


def test_canvases_run_inline_under_task_always_eager() -> None:
    app = make_app("eager", task_always_eager=True)
    add, mul, tsum = app.tasks["rapp.add"], app.tasks["rapp.mul"], app.tasks["rapp.tsum"]
    assert add.s(1, 2).delay().get() == 3
    line = (add.s(1, 2) | add.s(10) | mul.s(2)).delay()
    assert line.get() == 26 and line.parent is not None and line.parent.get() == 13
    assert (add.si(5, 5) | add.s(1)).apply_async().get() == 11
    grouped = group(add.s(i, i) for i in range(3)).delay()
    assert isinstance(grouped, GroupResult) and grouped.get() == [0, 2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay().get() == 6
    assert (add.s(1, 1) | group(mul.s(2), mul.s(3)) | tsum.s()).delay().get() == 10
    assert add.map([]).delay().get() == []
    assert add.starmap([(1, 2), (3, 4)]).delay().get() == [3, 7]
    assert add.chunks([(1, 1)] * 3, 2).delay().get() == [[2, 2], [2]]
    linked = add.apply_async((1, 2), link=mul.s(10))
    assert linked.get() == 3


def test_a_reply_queue_goes_in_every_frozen_signature_a_message_carries() -> None:
    """rpc://: a chain's later steps report to the caller's reply queue, as Celery freezes
    them with it; a callback, not frozen, is left for the worker that applies it."""
    app = make_app("reply-to")
    add, mul = app.tasks["rapp.add"], app.tasks["rapp.mul"]
    line = add.s(1, 1) | group(mul.s(2), mul.s(3)) | add.s(1)
    line.tasks[-1].link(mul.s(5))
    expansion = canvas.apply(line)
    [batch] = canvas_publish.build(app, expansion.calls, reply_to="oid")
    [envelope] = batch.envelopes
    _, _, embed = json.loads(envelope.body)
    [a_chord] = embed["chain"]
    assert a_chord["subtask_type"] == "chord" and "reply_to" not in a_chord["options"]
    members = a_chord["kwargs"]["header"]["kwargs"]["tasks"]
    assert [m["options"]["reply_to"] for m in members] == ["oid", "oid"]
    body = a_chord["kwargs"]["body"]
    assert body["options"]["reply_to"] == "oid"
    assert "reply_to" not in body["options"]["link"][0]["options"]


async def test_a_frozen_signature_is_published_under_its_ids(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = await recording(app, monkeypatch)
    add = app.tasks["rapp.add"]
    line = add.s(1, 1) | add.s(2)
    frozen = line.freeze()
    result = await line.delay()
    assert result.id == frozen.id and result.parent is not None
    assert published.messages[0].headers["id"] == line.tasks[0].id == result.parent.id


def test_task_apply_with_link_runs_the_callback_inline() -> None:
    app = make_app("apply-link")
    seen: list[int] = []

    @app.task(name="rapp.keep")
    def keep(value: int) -> None:
        seen.append(value)

    add = app.tasks["rapp.add"]
    assert add.apply((2, 3), link=keep.s()).get() == 5
    assert seen == [5]


# -- end to end, with a worker -----------------------------------------------------------------


async def test_canvases_run_on_a_worker() -> None:
    app = make_app("end-to-end")
    add, mul, tsum = app.tasks["rapp.add"], app.tasks["rapp.mul"], app.tasks["rapp.tsum"]

    async def work() -> None:
        line = await (add.s(1, 2) | add.s(10) | mul.s(2)).delay()
        assert await line.get(timeout=10) == 26
        assert line.parent is not None and await line.parent.get(timeout=10) == 13
        grouped = await group(add.s(i, i) for i in range(4)).delay()
        assert await grouped.get(timeout=10) == [0, 2, 4, 6]
        joined = await chord([add.s(i, i) for i in range(4)], tsum.s()).delay()
        assert await joined.get(timeout=10) == 12
        upgraded = await (add.s(1, 1) | group(mul.s(2), mul.s(3)) | tsum.s()).delay()
        assert await upgraded.get(timeout=10) == 10
        pairs = await add.chunks([(i, i) for i in range(3)], 2).delay()
        assert await pairs.get(timeout=10) == [[0, 2], [4]]

    await run_worker(app, work)


async def test_get_follows_parents_to_where_the_canvas_broke() -> None:
    """``get()`` of a failed chord body raises, as Celery's does by default
    (``follow_parents``), the failure of the header task that broke it; with
    ``follow_parents=False``, the body's own ChordError."""
    app = make_app("follow-parents")
    add, tsum = app.tasks["rapp.add"], app.tasks["rapp.tsum"]

    @app.task(name="rapp.boom")
    def boom(x: int) -> int:
        raise ValueError(f"kaboom {x}")

    async def work() -> None:
        joined = await chord([add.s(1, 1), boom.s(2)], tsum.s()).delay()
        with pytest.raises(ValueError, match="kaboom 2"):
            await joined.get(timeout=10)
        with pytest.raises(Exception, match=r"Dependency .* raised ValueError") as own:
            await joined.get(timeout=10, follow_parents=False)
        assert type(own.value).__name__ == "ChordError"
        line = await (add.s(1, 2) | boom.s() | add.s(5)).delay()
        with pytest.raises(ValueError, match="kaboom 3"):
            await line.get(timeout=10)
        fine = await (add.s(1, 2) | add.s(5)).delay()
        assert await fine.get(timeout=10) == 8

    await run_worker(app, work)
