"""An exception module that only the worker processes import (never the test process), so a
client has to cope with a type it cannot import."""

from __future__ import annotations


class WorkerOnlyError(Exception):
    """Raised by ``interop.fail_worker_only``."""
