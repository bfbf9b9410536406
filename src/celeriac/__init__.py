"""celeriac: an asyncio-native task queue that speaks Celery's protocol v2.

The public names, nothing else; see README.md for a five-minute tour.
"""

from importlib import metadata as _metadata

from celeriac import states
from celeriac._state import current_app
from celeriac.app import Celery, shared_task
from celeriac.canvas import (
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    xmap,
    xstarmap,
)
from celeriac.ids import uuid
from celeriac.resources import Resource, use
from celeriac.result import AsyncResult, GroupResult, ResultSet
from celeriac.task import AsyncTask, StreamingTask, SyncTask, Task

try:
    # pyproject.toml's version, as the installed distribution records it: the one source.
    __version__ = _metadata.version("celeriac")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncResult",
    "AsyncTask",
    "Celery",
    "GroupResult",
    "Resource",
    "ResultSet",
    "Signature",
    "StreamingTask",
    "SyncTask",
    "Task",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "use",
    "uuid",
    "xmap",
    "xstarmap",
]
