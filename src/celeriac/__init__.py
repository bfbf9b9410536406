"""celeriac: an asyncio-native task queue that speaks Celery's protocol v2.

The public names, nothing else; see README.md for a five-minute tour.
"""

from celeriac import states
from celeriac.app import Celery, shared_task
from celeriac.ids import uuid
from celeriac.resources import Resource, use
from celeriac.result import AsyncResult
from celeriac.task import AsyncTask, StreamingTask, SyncTask, Task

__all__ = [
    "AsyncResult",
    "AsyncTask",
    "Celery",
    "Resource",
    "StreamingTask",
    "SyncTask",
    "Task",
    "shared_task",
    "states",
    "use",
    "uuid",
]
