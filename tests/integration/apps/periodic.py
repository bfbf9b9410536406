"""A periodic task for the scheduler tests: sent every second to a queue no worker consumes,
so the test counts the messages, by the run each was sent for, once the fleet has run."""

from __future__ import annotations

import os

from basic import configure_from_env

from celeriac import Celery

#: Where the runs go: a queue of their own, read by the test afterwards.
RUNS_QUEUE = "beat-runs"

app = Celery("periodic")


def configure() -> None:
    configure_from_env_of(app)
    app.conf.beat_schedule = {
        "every-second": {
            "task": "periodic.noted",
            "schedule": 1.0,
            "args": [1],
            "options": {"queue": RUNS_QUEUE},
        }
    }
    app.conf.beat_failover_timeout = float(os.environ.get("CELERIAC_TEST_BEAT_FAILOVER", "4"))


def configure_from_env_of(target: Celery) -> None:
    import basic

    configure_from_env()
    target.conf.broker_transport_options = basic.app.conf.broker_transport_options
    target.conf.result_backend_transport_options = basic.app.conf.result_backend_transport_options


configure()


@app.task
def noted(x: int) -> int:
    return x
