"""Periodic tasks: Celery's ``beat_schedule``, sent by one leader among any number of schedulers.

``celeriac beat`` runs a scheduler; ``celeriac worker -B`` runs one inside the worker. Run as
many as you like: they elect one leader through a short lease in the result store
(:mod:`celeriac.beat.leadership`), each run is claimed once in the same store
(:mod:`celeriac.beat.store`), and another scheduler takes over within
``beat_failover_timeout`` of the leader's death. On RabbitMQ alone, with no result store to
keep them, RabbitMQ picks the leader and keeps the runs (:mod:`celeriac.beat.rabbitmq`).
Runs are computed from the schedule (:mod:`celeriac.schedules`), in the ``timezone``
setting, never from the last send; missed runs follow a policy
(:mod:`celeriac.beat.scheduler`). Entries can be changed at run time (:class:`PeriodicTasks`,
``celeriac beat list/add/pause/resume/remove``).

Guarantee: each run of each entry is sent once. A scheduler that dies after claiming a run
and before recording it sent leaves the run in doubt; the next leader publishes it again
under the same task id with :meth:`~celeriac.transports.broker.Broker.publish_once`, which on
Redis and the embedded SQLite broker queues it only if it is not queued already. A RabbitMQ
broker cannot tell, so there (and only in that crash window) a run may be queued twice,
under the same task id, rather than lost.
"""

from celeriac.beat.entries import Entry
from celeriac.beat.manage import EntryInfo, PeriodicTasks
from celeriac.beat.scheduler import Run, Scheduler

__all__ = ["Entry", "EntryInfo", "PeriodicTasks", "Run", "Scheduler"]
