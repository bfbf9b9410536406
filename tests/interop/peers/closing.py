"""Closing a real Celery app completely (for the tests' own Celery clients)."""

from __future__ import annotations

import contextlib
from typing import Any


def close_celery_app(celery: Any) -> None:
    """Close a Celery app with what its result backend opened (its pub/sub and its pooled
    Redis connections), which ``Celery.close()`` leaves to the garbage collector: a socket
    the collector finds later is an error in whichever test runs then."""
    # The backend it made, if any (reading .backend would make one): cached, or per thread.
    local = getattr(celery, "_local", None)
    backend = getattr(celery, "_backend_cache", None) or getattr(local, "backend", None)
    if backend is not None:
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            # Its connection may be reset already (the broker's run ended).
            with contextlib.suppress(OSError):
                consumer.stop()
        client = backend.__dict__.get("client")
        if client is not None:
            client.connection_pool.disconnect()
    celery.close()
