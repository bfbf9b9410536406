"""The ``control`` commands: what ``celery control``, Flower's buttons and ``app.control``
make a worker do, with Celery 5.7's replies (``shared/celery-protocol/WAVE2.md`` §2.3).

A command celeriac's worker cannot carry out answers ``{"error": ...}`` with the reason, as
Celery's answers for a pool that cannot do it (Flower shows the text): never a silent
``ok``.
"""

from __future__ import annotations

import logging
from typing import Any

from celeriac.rates import parse_rate
from celeriac.worker.commands import NO_REPLY, ControlContext, command

logger = logging.getLogger("celeriac.worker")


@command("control")
def shutdown(context: ControlContext, msg: str | None = None) -> Any:
    """Stop the worker gracefully (no reply, as Celery's)."""
    logger.warning("%s: remote control asked it to shut down", context.hostname)
    context.worker.stop()
    return NO_REPLY


@command("control")
def pool_grow(context: ControlContext, n: int = 1) -> dict[str, str]:
    """Run ``n`` more tasks at once."""
    context.worker.resize(int(n))
    return {"ok": "pool will grow"}


@command("control")
def pool_shrink(context: ControlContext, n: int = 1) -> dict[str, str]:
    """Run ``n`` fewer tasks at once (never fewer than one)."""
    context.worker.resize(-int(n))
    return {"ok": "pool will shrink"}


@command("control")
def autoscale(context: ControlContext, max: int | None = None, min: int | None = None) -> Any:
    """Celery's autoscaler: celeriac has none (``pool_grow``/``pool_shrink`` resize)."""
    return {"error": "autoscale is not in celeriac: use pool_grow / pool_shrink"}


@command("control")
def pool_restart(context: ControlContext, **arguments: Any) -> dict[str, str]:
    """Reload modules in a pool's processes: not in celeriac (restart the worker)."""
    return {"error": "pool_restart is not in celeriac: restart the worker to load new code"}


@command("control")
def time_limit(
    context: ControlContext,
    task_name: str | None = None,
    hard: float | None = None,
    soft: float | None = None,
) -> dict[str, str]:
    """Set a task's hard and soft time limits (seconds) in this worker."""
    task = context.worker.app.tasks.get(task_name or "")
    if task is None:
        return {"error": "unknown task"}
    task.options.time_limit = float(hard) if hard else None
    task.options.soft_time_limit = float(soft) if soft else None
    logger.info(
        "%s: new time limits for %s: hard %s, soft %s", context.hostname, task_name, hard, soft
    )
    return {"ok": "time limits set successfully"}


@command("control")
def rate_limit(
    context: ControlContext, task_name: str | None = None, rate_limit: Any = None
) -> dict[str, str]:
    """Set a task's rate limit in this worker (``"10/m"``...; 0 or None: no limit), until
    it stops; Celery's replies."""
    try:
        rate = parse_rate(rate_limit)
    except ValueError as exc:
        return {"error": f"Invalid rate limit string: {exc}"}
    task = context.worker.app.tasks.get(task_name or "")
    if task is None:
        return {"error": "unknown task"}
    context.worker.rate_limits.set(task.name, rate)
    if rate is None:
        logger.info("%s: rate limit of %s taken off", context.hostname, task_name)
        return {"ok": "rate limit disabled successfully"}
    logger.info("%s: new rate limit for %s: %s", context.hostname, task_name, rate)
    return {"ok": "new rate limit set successfully"}


@command("control")
async def add_consumer(
    context: ControlContext, queue: str | None = None, **options: Any
) -> dict[str, str]:
    """Consume ``queue`` too (Celery's exchange and routing options are taken and not
    needed: a celeriac queue is its name)."""
    if not queue:
        return {"error": "add_consumer needs a queue name"}
    worker = context.worker
    if queue in worker.queues:
        return {"ok": f"already consuming from {queue!r}"}
    await worker.consume_from([*worker.queues, queue])
    logger.info("%s: consuming from %s too (remote control)", context.hostname, queue)
    return {"ok": f"add consumer {queue}"}


@command("control")
async def cancel_consumer(
    context: ControlContext, queue: str | None = None, **options: Any
) -> dict[str, str]:
    """Stop consuming ``queue`` (its messages stay in it)."""
    worker = context.worker
    if queue in worker.queues:
        await worker.consume_from([q for q in worker.queues if q != queue])
        logger.info("%s: no longer consuming from %s (remote control)", context.hostname, queue)
    return {"ok": f"no longer consuming from {queue}"}


@command("control")
def election(context: ControlContext, **arguments: Any) -> None:
    """Celery's gossip election (broken in Celery itself): ignored."""
    return None
