"""Tasks that end the worker process running them, for the supervisor's restart tests; the
``basic`` app and its tasks besides (run with ``-A crashing:app``)."""

from __future__ import annotations

import os
import signal

from basic import MARKS, app, mark

__all__ = ["app", "crash_once"]


@app.task
def crash_once(name: str, how: str) -> int:
    """The first time, leaves the mark ``name`` (with its pid) and ends its process: ``exit``
    with status 3, ``kill`` by SIGKILL. Run again (the message redelivered), returns the pid
    of the process that survived it."""
    if not (MARKS / name).exists():
        mark(name, str(os.getpid()))
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    return os.getpid()
