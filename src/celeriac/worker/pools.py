"""Worker pools: groups of worker processes, each group with its own queues and concurrency.

One command can run several pools (say ``email`` with 2 processes, ``image`` with 2, ``data``
with 4), so slow image work never starves email. They come from the setting
``worker_pools`` or from ``--pool`` on the command line::

    app.conf.worker_pools = {
        "email": {"queues": ["email"], "processes": 2, "concurrency": 50},
        "data": {"queues": ["data", "reports"], "processes": 4},
    }

    celeriac -A proj:app worker --pool "email: queues=email processes=2 concurrency=50" \\
                                --pool "data: queues=data,reports processes=4"

Without pools, ``--processes N`` (or ``worker_processes``) runs N processes on the
command's ``-Q`` queues.

Celery's ``-P``/``--pool`` names a pool *type* instead. celeriac has one kind of worker
process (``async def`` tasks on its event loop, plain ``def`` tasks in a thread pool), so
``-P solo`` and ``-P threads`` map to it in this very process, and ``prefork``, ``gevent``
and ``eventlet`` are answered with what celeriac does instead (:func:`celery_pool_refusal`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celeriac.errors import ConfigurationError

_KEYS = ("queues", "processes", "concurrency")

#: Celery's pool types that celeriac maps to its own worker process, run in this process:
#: ``solo`` (one task at a time unless -c says otherwise) and ``threads`` (plain ``def``
#: tasks in threads, as celeriac always runs them).
SAME_PROCESS_POOLS = ("solo", "threads")
#: Celery's pool types that celeriac has no equivalent for.
REFUSED_POOLS = ("prefork", "processes", "gevent", "eventlet", "custom")


def celery_pool_refusal(name: str) -> str:
    """What to answer Celery's ``-P prefork|gevent|eventlet``: celeriac's model and the flag
    that sets the number of processes."""
    instead = {
        "prefork": "for several processes give their number: -P N (or --processes N)",
        "processes": "for several processes give their number: -P N (or --processes N)",
        "gevent": "for many tasks at once write them as async def, or raise -c for def tasks",
        "eventlet": "for many tasks at once write them as async def, or raise -c for def tasks",
        "custom": "celeriac has no pluggable pool classes",
    }[name]
    return (
        f"celeriac has no {name!r} pool: every worker process runs async def tasks on its"
        f" event loop and plain def tasks in a thread pool (--threads); {instead}"
    )


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool: its name, queues, number of processes and tasks at once per process (None:
    the app's ``worker_concurrency``)."""

    name: str
    queues: tuple[str, ...]
    processes: int = 1
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if not self.queues:
            raise ConfigurationError(f"pool {self.name!r} has no queues: give queues=...")
        if self.processes < 1:
            raise ConfigurationError(f"pool {self.name!r}: processes must be at least 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError(f"pool {self.name!r}: concurrency must be at least 1")


def pool_from_mapping(name: str, values: Mapping[str, Any]) -> PoolSpec:
    """A pool from ``worker_pools[name]``: ``queues`` (a list or a comma-separated string),
    ``processes``, ``concurrency``."""
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise ConfigurationError(
            f"pool {name!r}: unknown key(s) {', '.join(unknown)}; a pool takes {', '.join(_KEYS)}"
        )
    queues = values.get("queues", ())
    if isinstance(queues, str):
        queues = [q.strip() for q in queues.split(",")]
    try:
        processes = int(values.get("processes", 1))
        concurrency = values.get("concurrency")
        concurrency = None if concurrency is None else int(concurrency)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"pool {name!r}: processes and concurrency must be whole numbers"
        ) from None
    return PoolSpec(name, tuple(q for q in queues if q), processes, concurrency)


def parse_pool(text: str) -> PoolSpec:
    """``NAME: queues=a,b processes=2 concurrency=50`` (the ``--pool`` syntax)."""
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not colon and name in REFUSED_POOLS:  # Celery's --pool prefork, say
        raise ConfigurationError(f"--pool {name}: {celery_pool_refusal(name)}")
    if not colon and name in SAME_PROCESS_POOLS:
        raise ConfigurationError(
            f"--pool {name}: celeriac's --pool defines a named pool ('NAME: queues=Q1,Q2"
            f" processes=N'); for Celery's {name} pool use -P {name}"
        )
    if not colon or not name:
        raise ConfigurationError(
            f"--pool {text!r}: expected 'NAME: queues=Q1,Q2 processes=N concurrency=N'"
        )
    values: dict[str, str] = {}
    for part in rest.split():
        key, equals, value = part.partition("=")
        if not equals:
            raise ConfigurationError(f"--pool {text!r}: {part!r} is not key=value")
        values[key] = value
    return pool_from_mapping(name, values)


def resolve_pools(
    configured: Mapping[str, Mapping[str, Any]] | None,
    given: Sequence[str],
    *,
    queues: Sequence[str],
    processes: int,
    concurrency: int | None,
) -> list[PoolSpec]:
    """The pools to run: ``--pool`` options win over ``worker_pools``; with neither, one pool
    ``default`` of ``processes`` processes on ``queues``."""
    if given:
        pools = [parse_pool(text) for text in given]
    elif configured:
        pools = [pool_from_mapping(name, values) for name, values in configured.items()]
    else:
        return [PoolSpec("default", tuple(queues), processes, concurrency)]
    names = [pool.name for pool in pools]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigurationError(f"pool name(s) given twice: {', '.join(duplicated)}")
    return pools
