"""``celeriac inspect`` / ``celeriac control``: Celery's command shapes (the words after
the command become its arguments as Celery's command line maps them) and Celery's output
(``->  node: OK``, ``- empty -``, ``N nodes online.``, exit 69 when nobody answers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from celeriac import Celery, cli
from celeriac.control_output import UsageError, command_arguments, report
from celeriac.worker.worker import Worker
from inprocess import memory_app

TIMEOUT = 10


@pytest.mark.parametrize(
    ("kind", "words", "expected"),
    [
        ("inspect", ["ping"], {}),
        ("inspect", ["active"], {}),
        ("inspect", ["stats"], {}),
        ("inspect", ["conf", "yes"], {"with_defaults": True}),
        ("inspect", ["conf", "false"], {"with_defaults": False}),
        ("inspect", ["registered"], {"taskinfoitems": []}),
        ("inspect", ["registered", "rate_limit", "time_limit"],
         {"taskinfoitems": ["rate_limit", "time_limit"]}),
        ("inspect", ["query_task", "id1", "id2"], {"ids": ["id1", "id2"]}),
        ("control", ["pool_grow"], {}),
        ("control", ["pool_grow", "3"], {"n": 3}),
        ("control", ["pool_shrink", "2"], {"n": 2}),
        ("control", ["time_limit", "t.add", "5"], {"task_name": "t.add", "soft": 5.0}),
        ("control", ["time_limit", "t.add", "5", "9.5"],
         {"task_name": "t.add", "soft": 5.0, "hard": 9.5}),
        ("control", ["rate_limit", "t.add", "5/s"], {"task_name": "t.add", "rate_limit": "5/s"}),
        ("control", ["revoke", "a", "b"], {"task_id": ["a", "b"]}),
        ("control", ["terminate", "SIGKILL", "a"], {"signal": "SIGKILL", "task_id": ["a"]}),
        ("control", ["add_consumer", "q1"], {"queue": "q1"}),
        ("control", ["add_consumer", "q1", "ex", "direct", "rk"],
         {"queue": "q1", "exchange": "ex", "exchange_type": "direct", "routing_key": "rk"}),
        ("control", ["cancel_consumer", "q1"], {"queue": "q1"}),
        ("control", ["enable_events"], {}),
        ("control", ["disable_events"], {}),
        ("control", ["heartbeat"], {}),
        ("control", ["shutdown"], {}),
    ],
)  # fmt: skip
def test_the_words_become_celerys_arguments(
    kind: str, words: list[str], expected: dict[str, Any]
) -> None:
    assert command_arguments(kind, words[0], words[1:]) == expected


def test_an_unknown_command_names_the_commands() -> None:
    with pytest.raises(UsageError, match=r"'nope' not recognized.*pool_grow, pool_shrink"):
        command_arguments("control", "nope", [])
    with pytest.raises(UsageError, match="active, active_queues, clock"):
        command_arguments("inspect", "pool_grow", [])


def test_too_many_or_wrong_words_say_what_the_command_takes() -> None:
    with pytest.raises(UsageError, match=r"pool_grow takes arguments: \[N=1\]"):
        command_arguments("control", "pool_grow", ["1", "2"])
    with pytest.raises(UsageError, match="ping takes no arguments"):
        command_arguments("inspect", "ping", ["x"])
    with pytest.raises(UsageError, match="n: invalid literal"):
        command_arguments("control", "pool_grow", ["many"])


def test_the_command_line_refuses_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["-A", "nowhere:app", "control", "frobnicate"])
    assert exited.value.code == 2
    assert "control command 'frobnicate' not recognized" in capsys.readouterr().err


# -- output ---------------------------------------------------------------------------------


def test_replies_print_as_celerys() -> None:
    replies = [
        {"a@host": {"ok": "pong"}},
        {"b@host": {"error": "KeyError('nope')"}},
        {"c@host": []},
        {"d@host": ["t.add", "t.mul"]},
        {"e@host": {"total": {"t.add": 2}, "pid": 7}},
    ]
    assert report(replies, as_json=False, kind="inspect") == (
        "->  a@host: OK\n"
        "        pong\n"
        "->  b@host: ERROR\n"
        "        KeyError('nope')\n"
        "->  c@host: OK\n"
        "    - empty -\n"
        "->  d@host: OK\n"
        "    * t.add\n"
        "    * t.mul\n"
        "->  e@host: OK\n"
        "    {\n"
        '        "pid": 7,\n'
        '        "total": {\n'
        '            "t.add": 2\n'
        "        }\n"
        "    }\n"
        "\n"
        "5 nodes online."
    )


def test_one_node_is_singular_and_control_prints_no_count() -> None:
    replies = [{"a@host": {"ok": "pool will grow"}}]
    assert report(replies, as_json=False, kind="inspect").endswith("\n\n1 node online.")
    assert report(replies, as_json=False, kind="control") == (
        "->  a@host: OK\n        pool will grow"
    )


def test_json_is_inspects_merged_object_or_controls_list() -> None:
    replies = [{"a@host": {"ok": "pong"}}, {"b@host": []}]
    assert json.loads(report(replies, as_json=True, kind="inspect")) == {
        "a@host": {"ok": "pong"},
        "b@host": [],
    }
    assert json.loads(report(replies, as_json=True, kind="control")) == replies


# -- end to end on memory:// ----------------------------------------------------------------


@pytest.fixture
def app() -> Celery:
    app = memory_app("clictl")

    @app.task(name="clictl.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def run_cli(
    app: Celery, argv: list[str], monkeypatch: pytest.MonkeyPatch, *names: str
) -> tuple[int, list[Worker]]:
    """``cli.main(argv)`` in a thread of its own (it runs its own event loop), with workers
    named ``names`` answering on ``app``'s broker; the command's app is a second instance
    on the same memory broker, as a separate process would have."""
    client = Celery("clictl", broker=app.conf.broker_url)
    monkeypatch.setattr(cli, "load_app", lambda spec: client)
    async with app.setup():
        workers = [Worker(app, hostname=name, concurrency=4) for name in names]
        loop = asyncio.get_running_loop()
        runs = [loop.create_task(worker.run()) for worker in workers]
        try:
            for worker in workers:
                assert worker.mailbox is not None
                await asyncio.wait_for(worker.mailbox.ready.wait(), TIMEOUT)
            code = await asyncio.to_thread(cli.main, ["-A", "x:app", *argv])
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.wait_for(asyncio.gather(*runs), TIMEOUT)
    return code, workers


async def test_inspect_ping_prints_each_worker_and_the_count(
    app: Celery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await run_cli(app, ["inspect", "ping", "-d", "a@host"], monkeypatch, "a@host", "b@h")
    assert code == 0
    assert capsys.readouterr().out == "->  a@host: OK\n        pong\n\n1 node online.\n"


async def test_inspect_with_a_pattern_and_json(
    app: Celery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["inspect", "registered", "-p", "*@host", "-t", "0.5", "--json"]
    code, _ = await run_cli(app, argv, monkeypatch, "a@host", "b@other")
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"a@host": ["clictl.add"]}


async def test_control_pool_grow_acts_and_prints_the_reply(
    app: Celery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["control", "pool_grow", "3", "-d", "a@host"]
    code, (worker,) = await run_cli(app, argv, monkeypatch, "a@host")
    assert code == 0 and worker.concurrency == 7
    assert capsys.readouterr().out == "->  a@host: OK\n        pool will grow\n"


async def test_a_command_the_worker_lacks_prints_its_error_reply(
    app: Celery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["control", "rate_limit", "clictl.add", "5/fortnight", "-d", "a@host"]
    code, _ = await run_cli(app, argv, monkeypatch, "a@host")
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("->  a@host: ERROR\n        Invalid rate limit string: ")


async def test_no_reply_exits_69_as_celery(
    app: Celery, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await run_cli(app, ["inspect", "ping", "-t", "0.2"], monkeypatch)
    captured = capsys.readouterr()
    assert code == 69
    assert captured.err == "Error: No nodes replied within time constraint\n"
    assert captured.out == ""


async def test_task_events_flag_sets_the_setting(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def one_worker(app: Celery, args: Any, queues: list[str]) -> int:
        seen.update(
            events=app.conf.worker_send_task_events,
            heartbeat=app.conf.worker_heartbeat_interval,
        )
        return 0

    monkeypatch.setattr(cli, "load_app", lambda spec: app)
    monkeypatch.setattr(cli, "_one_worker", one_worker)
    argv = ["-A", "x:app", "worker", "-E", "--heartbeat-interval", "5"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert seen == {"events": True, "heartbeat": 5.0}


def test_a_supervised_workers_processes_get_the_event_options() -> None:
    args = cli._parser().parse_args(["worker", "-E", "--heartbeat-interval", "5", "-P", "2"])
    passed = cli._worker_args(args)
    assert "-E" in passed
    assert passed[passed.index("--heartbeat-interval") + 1] == "5.0"
