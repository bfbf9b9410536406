"""The command line: parses arguments and calls the library, nothing more.

``celeriac -A module:app worker|result|purge|status|inspect|control``. Errors are one line
that says what to fix, with a non-zero exit code; ``-l debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from celeriac import __version__, states
from celeriac._install import install_hint
from celeriac.app import Celery
from celeriac.errors import BrokerError, CeleriacError, ConfigurationError
from celeriac.result import AsyncResult
from celeriac.transports.urls import redacted

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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, except where there is none to show (a
    default of None means "from the app's settings", which the help text names)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


_EXAMPLES = """\
examples:
  celeriac -A proj.tasks:app worker -Q celery,email -c 50
  celeriac -A proj.tasks:app worker -P 4 --max-tasks-per-child 1000
  celeriac -A proj.tasks:app status
  celeriac -A proj.tasks:app inspect active -d w1@host
  celeriac -A proj.tasks:app control pool_grow 2
  celeriac -A proj.tasks:app beat list
  celeriac -A proj.tasks:app result 0c7e1b7a-... --follow
  celeriac run proj.web:app -P 2

Settings (broker_url, worker_concurrency, ...) come from the app (see docs/configuration.md);
a command-line option overrides its setting.
"""

_LOGLEVEL_HELP = (
    "what is logged: error, warning, info (the worker's start, each task received and how it"
    " ended) or debug (also the traceback of an error that ends the command, and the details"
    " of redeliveries and wake-ups) (default: info for worker and run, warning otherwise)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celeriac",
        description=textwrap.fill(
            "An asyncio task queue that speaks Celery's wire protocol. An error is one line"
            " that says what to fix, with exit status 1 (-l debug adds its traceback).",
            88,
        ),
        epilog=_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "-A",
        "--app",
        help="the Celery app, as module:attribute (e.g. proj.tasks:app), imported from the"
        " current directory; a bare module finds its app",
    )
    parser.add_argument("--version", action="version", version=f"celeriac {__version__}")
    level = argparse.ArgumentParser(add_help=False)
    level.add_argument("-l", "--loglevel", default=None, help=_LOGLEVEL_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[level],
            help=summary,
            description=textwrap.fill(description, 88),
            formatter_class=_HelpFormatter,
        )

    worker = command(
        "worker",
        "run a worker: consume queues and run their tasks",
        "Consume the queues and run their tasks until stopped (Ctrl-C or SIGTERM: a graceful"
        " stop that finishes running tasks; a second one stops at once and puts them back on"
        " their queue). async def tasks run on the event loop, plain def tasks in a thread"
        " pool. With -P N, --pool, --max-tasks-per-child or --max-memory-per-child (or their"
        " settings) the worker runs as child processes under a supervisor that replaces them.",
    )
    _worker_options(worker)

    result = command(
        "result",
        "show a task's state and result",
        "Print a task's state and result as JSON (PENDING for an id nobody stored).",
    )
    result.add_argument("task_id", help="the task's id (AsyncResult.id)")
    result.add_argument("--wait", action="store_true", help="wait until the task is ready")
    result.add_argument(
        "--follow",
        action="store_true",
        help="show its progress live (a bar for events with current/total) until it ends;"
        " exits 1 if it failed",
    )
    result.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait (default: no limit)"
    )

    purge = command(
        "purge", "delete waiting messages", "Delete every waiting message of the queues."
    )
    purge.add_argument(
        "-Q", "--queues", help="comma-separated queues (default: task_default_queue, celery)"
    )
    purge.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")

    status = command(
        "status",
        "queues, their lengths, dead letters",
        "Print the broker, each queue with waiting messages and its length, and the dead"
        " letters (messages set aside with their reason). Exits 1 with one line if the"
        " broker cannot be reached.",
    )
    status.add_argument(
        "-Q",
        "--queues",
        help="comma-separated queues to show besides the default one and those the broker"
        " lists (RabbitMQ lists none)",
    )

    events = command(
        "events",
        "watch the workers' events live (Celery's celery events)",
        "Show the event stream of the workers (celeriac's and Celery's, on Redis, RabbitMQ or"
        " the embedded SQLite file): a live table of the workers and their latest tasks, or"
        " with --dump one line per event as 'celery events --dump' prints them. Task events"
        " come from workers started with -E. Runs until Ctrl-C.",
    )
    events.add_argument(
        "-d", "--dump", action="store_true", help="print each event as a line instead"
    )

    beat = command(
        "beat",
        "send periodic tasks (Celery's celery beat), or list and change them",
        "Without an action: run a scheduler that sends the periodic tasks of beat_schedule"
        " and of the result store when they come due, until Ctrl-C. Run as many as you like"
        " (and workers with -B): they elect one leader through the result store and each run"
        " is sent once; another takes over within beat_failover_timeout (10 s) of the"
        " leader's death. Actions: list (the entries, last and next runs); add NAME TASK"
        " (--every or --cron); pause NAME; resume NAME; remove NAME (a stored entry). Changes"
        " are stored in the result store and taken up by the leader without a restart.",
    )
    beat.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "list", "add", "pause", "resume", "remove"),
        help="what to do (default: run a scheduler)",
    )
    beat.add_argument("words", nargs="*", metavar="NAME [TASK]", help="the entry (and task)")
    beat.add_argument("--every", type=float, metavar="SECONDS", help="add: an interval")
    beat.add_argument("--cron", metavar="'M H DOM MON DOW'", help="add: a crontab")
    beat.add_argument("--args", metavar="JSON", help="add: positional arguments, a JSON list")
    beat.add_argument("--kwargs", metavar="JSON", help="add: keyword arguments, a JSON object")
    beat.add_argument("--queue", help="add: the queue to send to")
    beat.add_argument(
        "--missed", choices=("once", "all", "skip"), help="add: the missed-runs policy"
    )
    beat.add_argument(
        "--max-interval",
        type=float,
        metavar="SECONDS",
        help="longest sleep between looks at the schedule (default: beat_max_loop_interval, 5)",
    )
    beat.add_argument(
        "-s",
        "--schedule",
        metavar="FILE",
        help="Celery's schedule file: accepted and not needed (the schedule's state lives in"
        " the result store)",
    )
    beat.add_argument(
        "-S",
        "--scheduler",
        help="Celery's scheduler class (RedBeat, django-celery-beat): refused; celeriac's"
        " scheduler reads beat_schedule and its own stored entries",
    )

    run = command(
        "run",
        "the web app (uvicorn) and the worker pools under one supervisor",
        "Serve an ASGI app with uvicorn and run the app's worker pools, one supervisor for"
        " all: a crashed process is replaced, Ctrl-C stops everything.",
    )
    run.add_argument("asgi", help="the ASGI app, as module:attribute (uvicorn's form)")
    run.add_argument("--host", default="127.0.0.1", help="web server address")
    run.add_argument("--port", type=int, default=8000, help="web server port")
    run.add_argument(
        "--reload", action="store_true", help="restart the web server when its code changes"
    )
    run.add_argument(
        "-Q", "--queues", help="comma-separated queues for the workers (default: celery)"
    )
    run.add_argument(
        "-c",
        "--concurrency",
        type=int,
        help="tasks run at once per worker process (default: worker_concurrency, 100)",
    )
    run.add_argument(
        "-P",
        "--processes",
        action=_ProcessesOrCeleryPool,
        metavar="N",
        help="worker processes (default: worker_processes, 1)",
    )
    run.add_argument(
        "--pool", action="append", default=[], help="a pool, as for 'worker' (repeatable)"
    )
    run.set_defaults(celery_pool=None)

    for kind, summary, description in (
        (
            "inspect",
            "ask the workers about themselves (Celery's celery inspect)",
            "Send an inspect command to the workers (celeriac's and Celery's) and print"
            " each reply as Celery's 'celery inspect' does. Exits 69 when no worker replied"
            " in time.",
        ),
        (
            "control",
            "make the workers act (Celery's celery control)",
            "Send a control command to the workers (celeriac's and Celery's) and print each"
            " reply as Celery's 'celery control' does; a command a worker lacks gets its"
            " error reply printed. Exits 69 when no worker replied in time.",
        ),
    ):
        _remote_options(command(kind, summary, description), kind)
    return parser


def _remote_options(parser: argparse.ArgumentParser, kind: str) -> None:
    """``inspect``/``control``: Celery's COMMAND [ARGS] and remote-control options."""
    from celeriac.control_output import listing

    parser.epilog = f"{kind} commands:\n{listing(kind)}"
    parser.add_argument("method", metavar="COMMAND", help=f"the {kind} command (listed below)")
    parser.add_argument("words", nargs="*", metavar="ARG", help="the command's arguments")
    parser.add_argument(
        "-d",
        "--destination",
        help="comma-separated node names to ask (default: every worker)",
    )
    parser.add_argument(
        "-t", "--timeout", type=float, default=1.0, help="seconds to wait for replies"
    )
    parser.add_argument("-j", "--json", action="store_true", help="print the replies as JSON")
    parser.add_argument(
        "-p", "--pattern", help="ask only the workers whose node name matches this pattern"
    )
    parser.add_argument(
        "--matcher",
        choices=("glob", "pcre"),
        help="how --pattern matches: glob (shell wildcards, the default with -p) or pcre (a"
        " regular expression searched in the name)",
    )
    if kind == "control":
        parser.add_argument(
            "--terminate",
            action="store_true",
            help="revoke: also stop the task if it is running",
        )
        parser.add_argument(
            "--signal", help="revoke --terminate: the signal to send (e.g. SIGKILL)"
        )


def _worker_options(worker: argparse.ArgumentParser) -> None:
    worker.add_argument(
        "-Q",
        "--queues",
        help="comma-separated queues to consume (default: task_default_queue, celery)",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        help="tasks run at once per process (default: worker_concurrency, 100)",
    )
    worker.add_argument(
        "-n",
        "--hostname",
        metavar="NAME",
        help="the worker's node name, as Celery's: name@host with %%h (the host name), %%n"
        " (its part before the first dot) and %%d (its domain) expanded, e.g. w1@%%h; a"
        " name without @ is the host part (default: celeriac@%%h; a supervised process is"
        " <pool>-<n>@%%h, or NAME-<pool>-<n>@host with -n)",
    )
    worker.add_argument(
        "--threads",
        type=int,
        help="threads that run plain def tasks (default: worker_threads, else"
        " min(32, concurrency))",
    )
    worker.add_argument(
        "--prefetch-multiplier",
        type=int,
        help="messages reserved per concurrency slot (default: worker_prefetch_multiplier, 4)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds a graceful shutdown waits for running tasks before putting them back"
        " on their queue (default: worker_shutdown_timeout, 30)",
    )
    worker.add_argument(
        "-P",
        "--processes",
        action=_ProcessesOrCeleryPool,
        metavar="N",
        help="worker processes on -Q's queues under a supervisor that replaces them (default:"
        " worker_processes, 1: this process is the one worker). Celery's pool types: solo"
        " and threads run this process as the one worker (solo: one task at a time unless -c"
        " says otherwise); prefork, gevent and eventlet do not exist here (give -P N for N"
        " processes, write async def tasks for many at once)",
    )
    worker.set_defaults(celery_pool=None)
    worker.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="'NAME: queues=Q1,Q2 processes=N concurrency=N'",
        help="a named pool of worker processes (repeat for several); overrides worker_pools",
    )
    worker.add_argument(
        "--max-tasks-per-child",
        type=int,
        metavar="N",
        help="replace a worker process after N tasks (default: worker_max_tasks_per_child,"
        " none); a single worker then runs under a supervisor that starts the next one",
    )
    worker.add_argument(
        "--max-memory-per-child",
        type=int,
        metavar="KIB",
        help="replace a worker process once its resident memory passes KIB kilobytes"
        " (default: worker_max_memory_per_child, none); a single worker then runs under a"
        " supervisor that starts the next one",
    )
    worker.add_argument(
        "-E",
        "--task-events",
        action="store_true",
        help="send task events (for Flower and celery events): sets worker_send_task_events",
    )
    worker.add_argument(
        "--heartbeat-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between the worker's heartbeat events (default:"
        " worker_heartbeat_interval, 2)",
    )
    worker.add_argument(
        "-B",
        "--beat",
        action="store_true",
        help="run a periodic-task scheduler in the worker too; safe on every worker of a"
        " fleet: the schedulers elect one leader, so each run is sent once",
    )
    worker.add_argument("--child", help=argparse.SUPPRESS)  # set by the supervisor
    # Set by the supervisor: the pipe its child reports on once it consumes.
    worker.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


class _ProcessesOrCeleryPool(argparse.Action):
    """``-P``: celeriac's number of worker processes, or one of Celery's pool *types* (its
    ``-P`` means that): ``solo``/``threads`` are recorded in ``celery_pool``, the others
    are refused with what celeriac does instead (never "invalid int value")."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from celeriac.worker.pools import REFUSED_POOLS, SAME_PROCESS_POOLS, celery_pool_refusal

        text = str(values).strip()
        name = text.lower()
        if text.isdigit():
            if int(text) < 1:
                raise argparse.ArgumentError(self, "give at least 1 process")
            setattr(namespace, self.dest, int(text))
        elif name in SAME_PROCESS_POOLS:
            namespace.celery_pool = name
        elif name in REFUSED_POOLS:
            raise argparse.ArgumentError(self, celery_pool_refusal(name))
        else:
            raise argparse.ArgumentError(
                self,
                f"{text!r} is not a number of processes (-P 4) nor one of Celery's pool"
                " types (solo, threads, prefork, gevent, eventlet)",
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("inspect", "control"):
        from celeriac.control_output import UsageError, command_arguments

        try:
            args.arguments = command_arguments(args.command, args.method, args.words)
        except UsageError as exc:
            parser.error(str(exc))
    if args.command == "run" and not args.app:
        args.app = args.asgi.partition(":")[0]  # the Celery app beside the web app
    level = (args.loglevel or ("info" if args.command == "worker" else "warning")).upper()
    log_format = LOG_FORMAT
    if getattr(args, "child", None):  # a pool's process: its name instead of MainProcess
        log_format = LOG_FORMAT.replace("%(processName)s", args.child)
    logging.basicConfig(level=level, format=log_format)
    try:
        app = load_app(args.app)
        if args.command == "worker":  # a pool's processes too: they run this command
            app.finalize()  # import the task modules autodiscover_tasks() left for now
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
        "inspect": _remote,
        "control": _remote,
        "events": _events,
        "beat": _beat,
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
    if args.task_events:
        app.conf.worker_send_task_events = True
    if args.heartbeat_interval is not None:
        app.conf.worker_heartbeat_interval = args.heartbeat_interval
    if args.celery_pool == "solo" and args.concurrency is None:
        args.concurrency = 1  # Celery's solo pool runs one task at a time
    queues = _split(args.queues) or [app.conf.task_default_queue]
    if args.child is None and _needs_supervisor(app, args):
        return await _supervise(app, args, _pools(app, args))
    return await _one_worker(app, args, queues)


def _needs_supervisor(app: Celery, args: argparse.Namespace) -> bool:
    """Any pool or process count asked for means child processes under a supervisor (even
    one: it is recycled and replaced); so does recycling after N tasks or M KiB, since a
    process cannot replace itself. Otherwise this process is the worker."""
    if args.celery_pool is not None:  # -P solo / -P threads: this process, unless recycled
        if args.pool:
            raise ConfigurationError(f"-P {args.celery_pool} runs one process: drop --pool")
        return _recycles(app, args)
    pools = _pools(app, args)
    if args.pool or app.conf.worker_pools or args.processes or pools[0].processes > 1:
        return True
    if _recycles(app, args):
        logging.getLogger("celeriac.worker").info(
            "worker_max_tasks_per_child/worker_max_memory_per_child set: the worker runs as"
            " one process under a supervisor that replaces it when it is recycled"
        )
        return True
    return False


def _recycles(app: Celery, args: argparse.Namespace) -> bool:
    conf = app.conf
    return bool(
        args.max_tasks_per_child
        or args.max_memory_per_child
        or conf.worker_max_tasks_per_child
        or conf.worker_max_memory_per_child
    )


async def _beat(app: Celery, args: argparse.Namespace) -> int:
    from celeriac.beat.commands import manage, run_scheduler

    if args.scheduler:
        raise ConfigurationError(
            f"-S {args.scheduler}: celeriac runs its own scheduler, which reads beat_schedule"
            " and the entries stored with 'celeriac beat add'; drop -S (entries kept by"
            " RedBeat or django-celery-beat are not read: add them to beat_schedule)"
        )
    if args.max_interval is not None:
        app.conf.beat_max_loop_interval = args.max_interval
    if args.action == "run":
        if args.schedule:
            logging.getLogger("celeriac.beat").info(
                "-s %s is not needed: the schedule's state lives in the result store",
                args.schedule,
            )
        return await run_scheduler(app)
    return await manage(app, args.action, args.words, vars(args))


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
    if args.task_events:
        passed.append("-E")
    if args.beat:  # every process schedules: they elect one leader among them
        passed.append("-B")
    for flag, value in (
        ("-n", args.hostname),
        ("--max-tasks-per-child", args.max_tasks_per_child),
        ("--max-memory-per-child", args.max_memory_per_child),
        ("--threads", args.threads),
        ("--prefetch-multiplier", args.prefetch_multiplier),
        ("--shutdown-timeout", args.shutdown_timeout),
        ("--heartbeat-interval", args.heartbeat_interval),
    ):
        if value is not None:
            passed += [flag, str(value)]
    return passed


async def _one_worker(app: Celery, args: argparse.Namespace, queues: list[str]) -> int:
    from celeriac.worker.process import prepare_worker_process
    from celeriac.worker.worker import Worker

    child = args.child
    hostname = node_name(args.hostname, child)
    on_ready = None
    if args.ready_fd is not None:
        from celeriac.worker.supervisor import ready_reporter

        on_ready = ready_reporter(args.ready_fd)
    hooks = []
    if args.beat:
        from celeriac.beat.embedded import EmbeddedBeat

        hooks.append(EmbeddedBeat(app))
    conf = app.conf
    worker = Worker(
        app,
        queues=queues,
        concurrency=args.concurrency,
        hostname=hostname,
        threads=args.threads,
        prefetch_multiplier=args.prefetch_multiplier,
        shutdown_timeout=args.shutdown_timeout,
        max_tasks=(args.max_tasks_per_child or conf.worker_max_tasks_per_child) if child else None,
        max_memory_kib=(
            (args.max_memory_per_child or conf.worker_max_memory_per_child) if child else None
        ),
        on_ready=on_ready,
        hooks=hooks,
    )
    if child is not None:
        asyncio.get_running_loop().create_task(_stop_with_parent(worker))
    prepare_worker_process()
    await worker.run()
    return 0


def node_name(given: str | None, child: str | None = None, host: str | None = None) -> str | None:
    """The worker's node name from ``-n`` as Celery reads it: ``name@host``, a value without
    ``@`` being the host part; ``%h`` (the host name), ``%n`` (its part before the first
    dot), ``%d`` (the rest) and ``%%`` expanded. A supervised process (``child``) adds its
    slot to the name part, so each process of a pool has its own node name. None: the
    worker's default (``celeriac@<host>``)."""
    host = host or socket.gethostname()
    if given is None:
        return None if child is None else f"{child}@{host}"
    name, at, node_host = given.partition("@")
    if not at:
        name, node_host = "", given
    name = name or "celeriac"
    if child is not None:
        name = f"{name}-{child}"
    short, _, domain = host.partition(".")
    abbreviations = {"h": host, "n": short, "d": domain, "%": "%"}

    def expand(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in abbreviations:
            raise ConfigurationError(
                f"-n {given}: unknown %{key}; celeriac expands %h (the host name), %n (its part"
                " before the first dot), %d (its domain) and %%"
            )
        return abbreviations[key]

    return re.sub(r"%(.)", expand, f"{name}@{node_host or '%h'}")


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
    try:
        async with app.setup():
            broker = (await app.connection()).broker
            named = [app.conf.task_default_queue, *_split(args.queues)]
            sizes = await broker.queue_sizes(named)
            dead = await broker.dead_letter_count()
            recent = await broker.dead_letters(limit=5)
    except OSError as exc:  # a transport that says only "Connection refused"
        raise BrokerError(
            f"the broker at {redacted(app.conf.effective_broker_url())} is unreachable"
            f" ({type(exc).__name__}: {exc}); check that it runs and that broker_url points"
            " at it"
        ) from exc
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


async def _events(app: Celery, args: argparse.Namespace) -> int:
    """``events``: the live table, or ``--dump``'s lines, until interrupted."""
    from celeriac.events import dump, top

    watch = dump(app, sys.stdout) if args.dump else top(app, sys.stdout)
    async with app.setup():
        await watch
    return 0


async def _remote(app: Celery, args: argparse.Namespace) -> int:
    """``inspect``/``control``: broadcast the command, wait ``-t`` seconds (or for every
    named node) and print the replies as Celery's command line does."""
    from celeriac.control_output import EX_UNAVAILABLE, NO_REPLY, report

    arguments = dict(args.arguments)
    if args.command == "control" and args.method == "revoke":
        arguments.update(terminate=args.terminate, signal=args.signal)
    async with app.setup():
        replies = await app.control.broadcast(
            args.method,
            arguments,
            _split(args.destination) or None,
            reply=True,
            timeout=args.timeout,
            pattern=args.pattern,
            matcher=(args.matcher or "glob") if args.pattern else None,
        )
    if not replies:
        print(f"Error: {NO_REPLY}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(report(replies, as_json=args.json, kind=args.command))
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
