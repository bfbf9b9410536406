"""Remote-control messages against those Celery 5.7 sent and answered
(``tests/fixtures/celery-pidbox/``, captured on RabbitMQ and Redis): celeriac reads every
request Celery's client sends, writes requests and replies as Celery does, and a celeriac
worker's replies have the shape of a Celery worker's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from celeriac.errors import ProtocolError
from celeriac.protocol import pidbox
from celeriac.protocol.envelope import Envelope
from celeriac.worker.worker import Worker
from inprocess import memory_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "celery-pidbox"
CALLS: dict[str, Any] = json.loads((FIXTURES / "pidbox-amqp-all-commands.json").read_text())[
    "calls"
]


def envelope_of(body: Any, headers: dict[str, Any]) -> Envelope:
    return Envelope(json.dumps(body).encode(), "application/json", "utf-8", headers, {})


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_request_celery_sends_is_read(name: str) -> None:
    (sent,) = CALLS[name]["requests"]
    body = sent["body_decoded"]
    request = pidbox.parse_request(envelope_of(body, sent["properties"]["headers"]))
    assert request.method == body["method"]
    assert request.arguments == body["arguments"]
    assert request.clock == sent["properties"]["headers"]["clock"]
    assert request.is_call == ("reply_to" in body)
    if request.is_call:
        assert request.ticket == body["ticket"]
        assert request.reply_to == pidbox.ReplyTo(**body["reply_to"])


@pytest.mark.parametrize("name", sorted(CALLS))
def test_requests_are_written_as_celery_writes_them(name: str) -> None:
    (sent,) = CALLS[name]["requests"]
    body = sent["body_decoded"]
    reply_to = pidbox.ReplyTo(**body["reply_to"]) if "reply_to" in body else None
    envelope = pidbox.build_request(
        body["method"],
        body["arguments"],
        clock=7,
        destination=body["destination"],
        pattern=body["pattern"],
        matcher=body["matcher"],
        ticket=body.get("ticket"),
        reply_to=reply_to,
        timeout=1.0,
    )
    written = json.loads(envelope.body)
    assert written == body
    assert list(written) == list(body)  # Celery's key order
    assert sorted(envelope.headers) == ["clock", "expires"] and envelope.headers["clock"] == 7
    assert (envelope.headers["expires"] > 0) == (reply_to is not None)
    assert envelope.properties == {"delivery_mode": 2, "priority": 0}


@pytest.mark.parametrize("name", sorted(n for n in CALLS if CALLS[n]["replies"]))
def test_replies_are_written_and_read_as_celerys(name: str) -> None:
    (answer,) = CALLS[name]["replies"][:1]
    ((node, value),) = answer["body_decoded"].items()
    headers = answer["properties"]["headers"]
    envelope = pidbox.build_reply(node, value, ticket=headers["ticket"], clock=headers["clock"])
    assert json.loads(envelope.body) == answer["body_decoded"]
    assert envelope.headers == headers
    assert envelope.properties == {"delivery_mode": 1, "priority": 0}
    read = pidbox.parse_reply(envelope_of(answer["body_decoded"], headers))
    assert (read.ticket, read.node, read.value, read.clock) == (
        headers["ticket"],
        node,
        value,
        headers["clock"],
    )


@pytest.mark.parametrize(
    ("destination", "pattern", "matcher", "node", "addressed"),
    [
        (["w1@h"], None, None, "w1@h", True),
        (["w1@h"], None, None, "w2@h", False),
        (None, "w*@h", "glob", "w2@h", True),
        (None, "w*@h", "glob", "x@h", False),
        (None, "^w[12]", "pcre", "w2@h", True),
        (None, "^w[12]", "pcre", "w3@h", False),
        (None, "(", "pcre", "w3@h", False),  # a bad expression matches nothing
        (None, "w*", None, "x@h", True),  # a pattern without a matcher: kombu sends to all
        (None, None, None, "any@h", True),
        (["w1@h"], "x*", "glob", "w1@h", True),  # a destination wins over a pattern
    ],
)
def test_addressing_follows_kombu(
    destination: list[str] | None,
    pattern: str | None,
    matcher: str | None,
    node: str,
    addressed: bool,
) -> None:
    body = {"method": "ping", "arguments": {}, "destination": destination}
    body |= {"pattern": pattern, "matcher": matcher}
    request = pidbox.parse_request(envelope_of(body, {"clock": 1}))
    assert request.addressed_to(node) is addressed


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"[1, 2]", "application/json", "a JSON object"),
        (b'{"arguments": {}}', "application/json", "names its method"),
        (b'{"method": "ping", "arguments": [1]}', "application/json", "arguments must be"),
        (b'{"method": "ping", "destination": "w1"}', "application/json", "destination"),
        (b"{nope", "application/json", "cannot be read"),
        (b"\x80\x04", "application/x-python-serialize", "cannot be read"),
    ],
)
def test_a_malformed_request_names_the_problem(body: bytes, content_type: str, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        pidbox.parse_request(Envelope(body, content_type, "utf-8", {}, {}))


#: Inspect commands whose reply shape is compared with Celery's (those that act are tested
#: in test_remote_control.py).
SHAPES = [
    "ping",
    "inspect-active",
    "inspect-reserved",
    "inspect-query_task",
    "inspect-stats",
    "inspect-registered",
    "inspect-active_queues",
    "inspect-conf",
    "inspect-clock",
    "inspect-report",
]


def _shape(value: Any) -> Any:
    """The JSON types of ``value``, with the keys of the objects in it (first list item)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


async def answers_of_a_worker_running_two_sleepers() -> dict[str, Any]:
    """A celeriac worker's reply to each request of ``SHAPES``, while two tasks run."""
    app = memory_app("shapes")
    release, both = asyncio.Event(), asyncio.Event()
    started: list[int] = []

    @app.task(name="rapp.sleeper")
    async def sleeper(seconds: int) -> None:
        started.append(seconds)
        if len(started) == 2:
            both.set()
        await release.wait()

    answers: dict[str, Any] = {}
    async with app.setup():
        worker = Worker(app, hostname="w2@research", concurrency=2)
        assert worker.mailbox is not None
        running = asyncio.get_running_loop().create_task(worker.run())
        try:
            await asyncio.wait_for(worker.mailbox.ready.wait(), 10)
            held = [await sleeper.delay(30), await sleeper.delay(30)]
            await asyncio.wait_for(both.wait(), 10)
            for name in SHAPES:
                (sent,) = CALLS[name]["requests"]
                body = dict(sent["body_decoded"])
                if name == "inspect-query_task":
                    body["arguments"] = {"ids": [held[0].id]}
                request = pidbox.parse_request(envelope_of(body, {"clock": 1}))
                answers[name] = await worker.mailbox.run(request)
        finally:
            release.set()
            worker.stop()
            await asyncio.wait_for(running, 10)
    return answers


async def test_a_celeriac_worker_answers_with_the_shapes_celerys_does() -> None:
    answers = await answers_of_a_worker_running_two_sleepers()
    for name in SHAPES:
        ((_, celerys),) = CALLS[name]["replies"][0]["body_decoded"].items()
        ours = answers[name]
        if name == "inspect-stats":  # Flower reads these; the rest describes a pool
            for key in ("total", "pid", "clock", "uptime", "broker", "prefetch_count", "rusage"):
                assert type(ours[key]) is type(celerys[key]), key
            assert set(ours["broker"]) == set(celerys["broker"])
            assert set(ours["rusage"]) == set(celerys["rusage"])
        elif name in ("inspect-conf", "inspect-registered"):
            assert type(ours) is type(celerys)
        elif name == "inspect-report":
            assert set(ours) == {"ok"} and "software -> celeriac:" in ours["ok"]
        elif name == "inspect-query_task":
            ((state, request),) = ours.values()
            ((celery_state, celery_request), *_) = celerys.values()
            assert state == celery_state == "active"
            assert _shape(request) == _shape(celery_request)
        elif name == "inspect-reserved":
            assert ours == []  # both slots run: nothing waits here
        else:
            assert _shape(ours) == _shape(celerys), name
