"""The command line: parses arguments and calls the library, nothing more.

``celeriac -A module:app worker|result|purge|status``. Errors are one line that says what
to fix, with a non-zero exit code; ``-l debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from celeriac import __version__, states
from celeriac._install import install_hint
from celeriac.app import Celery
from celeriac.config import redacted
from celeriac.errors import CeleriacError, ConfigurationError
from celeriac.result import AsyncResult

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def load_app(spec: str | None) -> Celery:
    """Import ``module:attribute`` (or ``module``, finding its app) from the current directory."""
    if not spec:
        raise ConfigurationError("no app given: pass -A module:app (e.g. -A tasks:app)")
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] and exc.name != module_name:
            raise
        raise ConfigurationError(
            f"cannot import {module_name!r} given by -A {spec}: run from the directory that "
            "contains it, or fix the module path"
        ) from exc
    if attribute:
        app = getattr(module, attribute, None)
    else:  # ``app`` may well be the web app of the same module: look for the Celery one
        app = getattr(module, "app", None)
        if not isinstance(app, Celery):
            app = next((v for v in vars(module).values() if isinstance(v, Celery)), None)
    if not isinstance(app, Celery):
        raise ConfigurationError(
            f"-A {spec}: no Celery app found there; name it, e.g. -A {module_name}:app"
        )
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celeriac", description=__doc__.splitlines()[0])
    parser.add_argument("-A", "--app", help="the application, as module:attribute")
    parser.add_argument("--version", action="version", version=f"celeriac {__version__}")
    level = argparse.ArgumentParser(add_help=False)
    level.add_argument(
        "-l",
        "--loglevel",
        default=None,
        help="debug, info, warning or error (debug also shows tracebacks)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", parents=[level], help="run a worker process")
    worker.add_argument("-c", "--concurrency", type=int, help="tasks run at once")
    worker.add_argument("-Q", "--queues", help="comma-separated queues to consume")
    worker.add_argument("-n", "--hostname", help="the worker's node name")
    worker.add_argument("--threads", type=int, help="threads for plain def tasks")
    worker.add_argument(
        "--prefetch-multiplier", type=int, help="messages reserved per concurrency slot"
    )
    worker.add_argument(
        "--shutdown-timeout", type=float, help="seconds a graceful shutdown waits for tasks"
    )
    worker.add_argument(
        "-P",
        "--processes",
        type=int,
        help="worker processes on -Q's queues under a supervisor that replaces them (without"
        " it, this process is the one worker)",
    )
    worker.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="'NAME: queues=Q1,Q2 processes=N concurrency=N'",
        help="a pool of worker processes (repeat for several); overrides worker_pools",
    )
    worker.add_argument("--child", help=argparse.SUPPRESS)  # set by the supervisor
    # Set by the supervisor: the pipe its child reports on once it consumes.
    worker.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    result = commands.add_parser("result", parents=[level], help="show a task's state/result")
    result.add_argument("task_id")
    result.add_argument("--wait", action="store_true", help="wait until the task is ready")
    result.add_argument(
        "--follow",
        action="store_true",
        help="show its progress live (a bar for events with current/total) until it ends;"
        " exits 1 if it failed",
    )
    result.add_argument("--timeout", type=float, default=None, help="seconds to wait")

    purge = commands.add_parser("purge", parents=[level], help="delete waiting messages")
    purge.add_argument("-Q", "--queues", help="comma-separated queues (default: the default)")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")

    status = commands.add_parser(
        "status", parents=[level], help="queues, their lengths, dead letters"
    )
    status.add_argument(
        "-Q",
        "--queues",
        help="comma-separated queues to show besides the default one and those the broker"
        " lists (RabbitMQ lists none)",
    )

    run = commands.add_parser(
        "run",
        parents=[level],
        help="the web app (uvicorn) and the worker pools under one supervisor",
    )
    run.add_argument("asgi", help="the ASGI app, as module:attribute (uvicorn's form)")
    run.add_argument("--host", default="127.0.0.1", help="web server address (127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="web server port (8000)")
    run.add_argument(
        "--reload", action="store_true", help="restart the web server when its code changes"
    )
    run.add_argument("-Q", "--queues", help="comma-separated queues for the workers")
    run.add_argument("-c", "--concurrency", type=int, help="tasks run at once per worker")
    run.add_argument("-P", "--processes", type=int, help="worker processes (default 1)")
    run.add_argument(
        "--pool", action="append", default=[], help="a pool, as for 'worker' (repeatable)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run" and not args.app:
        args.app = args.asgi.partition(":")[0]  # the Celery app beside the web app
    level = (args.loglevel or ("info" if args.command == "worker" else "warning")).upper()
    log_format = LOG_FORMAT
    if getattr(args, "child", None):  # a pool's process: its name instead of MainProcess
        log_format = LOG_FORMAT.replace("%(processName)s", args.child)
    logging.basicConfig(level=level, format=log_format)
    try:
        app = load_app(args.app)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(app, args))
    except KeyboardInterrupt:
        return 130
    except (CeleriacError, OSError) as exc:
        if level == "DEBUG":
            logging.getLogger("celeriac").exception("failed")
        print(f"celeriac: error: {exc}", file=sys.stderr)
        return 1


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (celeriac's ``uvloop`` extra): a faster event loop."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _run(app: Celery, args: argparse.Namespace) -> int:
    handler = {
        "worker": _worker,
        "result": _result,
        "purge": _purge,
        "status": _status,
        "run": _run_everything,
    }
    return await handler[args.command](app, args)


def _pools(app: Celery, args: argparse.Namespace) -> list[Any]:
    """The pools a ``worker`` or ``run`` command asks for (see celeriac.worker.pools)."""
    from celeriac.worker.pools import resolve_pools

    return resolve_pools(
        app.conf.worker_pools,
        args.pool,
        queues=_split(args.queues) or [app.conf.task_default_queue],
        processes=args.processes or app.conf.worker_processes,
        concurrency=args.concurrency,
    )


async def _worker(app: Celery, args: argparse.Namespace) -> int:
    queues = _split(args.queues) or [app.conf.task_default_queue]
    if args.child is None:
        pools = _pools(app, args)
        # Any pool or process count asked for means child processes under a supervisor
        # (even one: it is recycled and replaced); otherwise this process is the worker.
        if args.pool or app.conf.worker_pools or args.processes or pools[0].processes > 1:
            return await _supervise(app, args, pools)
    return await _one_worker(app, args, queues)


async def _supervise(app: Celery, args: argparse.Namespace, pools: list[Any]) -> int:
    from celeriac.worker.supervisor import Supervisor, describe, worker_children

    children = worker_children(args.app, pools, _worker_args(args))
    return await Supervisor(children, describe(pools)).run()


async def _run_everything(app: Celery, args: argparse.Namespace) -> int:
    """``celeriac run``: uvicorn serving ``args.asgi`` and the app's worker pools, one
    supervisor for all (see celeriac.worker.supervisor)."""
    import importlib.util

    from celeriac.worker.supervisor import Child, Supervisor, describe, worker_children

    if importlib.util.find_spec("uvicorn") is None:
        raise ConfigurationError(
            f"celeriac run serves the web app with uvicorn: {install_hint('web')}"
        )
    pools = _pools(app, args)
    level = (args.loglevel or "info").lower()
    web = [sys.executable, "-m", "uvicorn", args.asgi, "--host", args.host]
    web += ["--port", str(args.port), "--log-level", level]
    if args.reload:
        web.append("--reload")
    worker_args = ["-l", level]
    # uvicorn cannot report on a ready pipe: the supervisor judges its start by time instead.
    web_child = Child("web", tuple(web), reports_ready=False)
    children = [web_child, *worker_children(args.app, pools, worker_args)]
    summary = f"web {args.asgi} on http://{args.host}:{args.port}; workers: {describe(pools)}"
    return await Supervisor(children, summary).run()


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The options a pool's processes get from the command that supervises them."""
    passed: list[str] = ["-l", args.loglevel or "info"]
    for flag, value in (
        ("--threads", args.threads),
        ("--prefetch-multiplier", args.prefetch_multiplier),
        ("--shutdown-timeout", args.shutdown_timeout),
    ):
        if value is not None:
            passed += [flag, str(value)]
    return passed


async def _one_worker(app: Celery, args: argparse.Namespace, queues: list[str]) -> int:
    from celeriac.worker.process import prepare_worker_process
    from celeriac.worker.worker import Worker

    child = args.child
    hostname = args.hostname
    if child is not None:
        hostname = f"{child}@{socket.gethostname()}"
    on_ready = None
    if args.ready_fd is not None:
        from celeriac.worker.supervisor import ready_reporter

        on_ready = ready_reporter(args.ready_fd)
    conf = app.conf
    worker = Worker(
        app,
        queues=queues,
        concurrency=args.concurrency,
        hostname=hostname,
        threads=args.threads,
        prefetch_multiplier=args.prefetch_multiplier,
        shutdown_timeout=args.shutdown_timeout,
        max_tasks=conf.worker_max_tasks_per_child if child else None,
        max_memory_kib=conf.worker_max_memory_per_child if child else None,
        on_ready=on_ready,
    )
    if child is not None:
        asyncio.get_running_loop().create_task(_stop_with_parent(worker))
    prepare_worker_process()
    await worker.run()
    return 0


async def _result(app: Celery, args: argparse.Namespace) -> int:
    result: AsyncResult[Any] = AsyncResult(args.task_id, app)
    if args.follow:
        return await _follow(app, result, args.timeout)
    async with app.setup():
        if args.wait:
            await result.get(timeout=args.timeout, propagate=False)
        else:
            await result.refresh()
        out = {"id": result.id, "state": result.state, "result": _plain(result.result)}
        if result.traceback:
            out["traceback"] = result.traceback
    print(json.dumps(out, indent=2, default=repr))
    return 0


async def _follow(app: Celery, result: AsyncResult[Any], timeout: float | None) -> int:
    """Print each event as it comes (on a terminal, a bar redrawn in place), then the final
    state as ``result`` prints it."""
    live = sys.stderr.isatty()
    drawn = False
    async with app.setup():
        async for event in result.stream(timeout=timeout, propagate=False):
            if event.ready:
                break
            line = _progress_line(event.state, event.info)
            if live:
                sys.stderr.write("\r\033[K" + line)
                drawn = True
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        if drawn:
            sys.stderr.write("\n")
        out = {"id": result.id, "state": result.state, "result": _plain(result.result)}
        if result.traceback:
            out["traceback"] = result.traceback
    print(json.dumps(out, indent=2, default=repr))
    return 0 if out["state"] == states.SUCCESS else 1


def _progress_line(state: str, info: Any, width: int = 30) -> str:
    """``PROGRESS [#####-----] 5/10 50%`` for events with numeric current/total, else the
    state and what it carries."""
    if isinstance(info, dict):
        current, total = info.get("current"), info.get("total")
        if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
            share = min(max(current / total, 0.0), 1.0)
            filled = round(share * width)
            bar = "#" * filled + "-" * (width - filled)
            return f"{state} [{bar}] {current:g}/{total:g} {share:.0%}"
    return f"{state} {json.dumps(_plain(info), default=repr)}"


async def _purge(app: Celery, args: argparse.Namespace) -> int:
    queues = _split(args.queues) or [app.conf.task_default_queue]
    if not args.force:
        if not sys.stdin.isatty():
            raise ConfigurationError("purge deletes messages: confirm with -f when not on a tty")
        question = f"Delete every waiting message of {', '.join(queues)}? [y/N] "
        answer = await asyncio.to_thread(input, question)
        if answer.strip().lower() not in ("y", "yes"):
            print("aborted")
            return 1
    async with app.setup():
        broker = (await app.connection()).broker
        for queue in queues:
            print(f"purged {await broker.purge(queue)} message(s) from {queue}")
    return 0


async def _status(app: Celery, args: argparse.Namespace) -> int:
    async with app.setup():
        broker = (await app.connection()).broker
        named = [app.conf.task_default_queue, *_split(args.queues)]
        sizes = await broker.queue_sizes(named)
        dead = await broker.dead_letter_count()
        recent = await broker.dead_letters(limit=5)
    print(f"broker: {redacted(broker.url)}")
    if not sizes:
        print("queues: none with messages")
    for queue, size in sorted(sizes.items()):
        print(f"  {_printable(queue)}: {size}")
    print(f"dead letters: {dead}")
    for letter in recent:
        name = letter.envelope.headers.get("task", "?")
        print(f"  [{_printable(letter.queue)}] {_printable(name)}: {_printable(letter.reason)}")
    return 0


def _printable(value: object) -> str:
    """Text as stdout can take it: a dead letter may name bytes that are not UTF-8 (held as
    lone surrogates), which print() would refuse; they show as escapes instead."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


async def _stop_with_parent(worker: Any) -> None:
    """A pool's process stops (gracefully) if its supervisor dies: it is re-parented then."""
    parent = os.getppid()
    while True:  # no event tells a process that its parent died: look once a second
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            break
    logging.getLogger("celeriac.worker").warning("the supervisor is gone: stopping")
    worker.stop()


def _split(value: str | None) -> list[str]:
    return [q.strip() for q in (value or "").split(",") if q.strip()]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return value


if __name__ == "__main__":
    raise SystemExit(main())
