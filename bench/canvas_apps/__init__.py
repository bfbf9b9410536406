"""The tasks ``bench/canvas.py`` runs, once for Celery and once for celeriac (same names).

Each app reads its Redis URL and its own key prefix from the environment (set by
``canvas.py`` before it imports them or starts a worker): its queue is the prefix without
its final colon, so the two workers never take each other's messages, and every key either
writes starts with its prefix, so a run deletes exactly what it made.
"""

import os

URL_VARIABLE = "CANVAS_BENCH_REDIS_URL"
CELERY_PREFIX_VARIABLE = "CANVAS_BENCH_CELERY_PREFIX"
CELERIAC_PREFIX_VARIABLE = "CANVAS_BENCH_CELERIAC_PREFIX"


def settings(prefix_variable: str) -> dict[str, object]:
    """The settings both apps share: Redis broker and results, JSON, the run's prefix."""
    prefix = os.environ[prefix_variable]
    url = os.environ[URL_VARIABLE]
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": {"global_keyprefix": prefix},
        "result_backend_transport_options": {"global_keyprefix": prefix},
        "task_default_queue": prefix.rstrip(":"),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }
