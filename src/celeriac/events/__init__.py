"""Watching Celery's event stream from a client: what ``celery events`` and Flower read.

:class:`EventReceiver` subscribes to ``event_exchange`` and yields each event as a dict
(a ``task.multi`` batch unpacked), as Celery's receiver hands them to its handlers: the
app's Lamport clock moved past each event's, ``timestamp`` brought to this host's offset,
``local_received`` added. :class:`~celeriac.events.state.State` folds them into workers
and tasks; :func:`~celeriac.events.dump.dump` prints one line per event as
``celery events --dump`` does, :func:`~celeriac.events.top.top` a live table.
"""

from __future__ import annotations

from celeriac.events.dump import dump
from celeriac.events.receiver import EventReceiver
from celeriac.events.state import State, TaskState, WorkerState
from celeriac.events.top import top

__all__ = ["EventReceiver", "State", "TaskState", "WorkerState", "dump", "top"]
