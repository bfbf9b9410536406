"""Rate limits across real worker processes on Redis (broker and result store): with the
worker scope each process starts a limited task at most once per ``period / limit``
(Celery's meaning); with the global scope all of them together start it at most ``limit``
times in any period, and use the whole budget; the backlog is shared out without any process
holding it.

Delivery is at least once: a task may start twice (a deferred message is now and then handed
out twice on Redis, ETA tasks alike), and each such start is a start the limit counts.

The global limit is checked twice: on the store's own record of its grants (the sorted set of
start times, by Redis's clock, which each task copies when it starts: a grant stays there a
period, and its task starts within milliseconds), exactly; and on the times the tasks
recorded, which trail their grants by the task's start-up.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker_url", ["redis"], indirect=True),
]

#: Each start's time and process, one line each, written by the task (appends are atomic);
#: a globally limited task also copies the store's grants of the last period.
APP = """
import os, time
import redis
from basic import app, mark
from celeriac.transports.redis.backend import RATE_STARTS_PREFIX, RedisBackend

url, options = os.environ["CELERIAC_RESULT_BACKEND"], app.conf.result_backend_transport_options
store = redis.Redis.from_url(url)
GRANTS = RedisBackend(url, options=options).prefix + RATE_STARTS_PREFIX + "rl.global"

@app.task(name="rl.per_worker", rate_limit="{rate}")
def per_worker(n):
    mark("starts", f"{{time.time()}} {{os.getpid()}} {{n}}")
    return n

@app.task(name="rl.global", rate_limit="{rate}", rate_limit_scope="global")
def shared(n):
    mark("starts", f"{{time.time()}} {{os.getpid()}} {{n}}")
    granted = store.zrange(GRANTS, 0, -1, withscores=True)
    mark("granted", "\\n".join(f"{{member.decode()}} {{int(score)}}" for member, score in granted))
    return n
"""
#: A measured start is later than the gate's grant by the task's own start-up: two starts'
#: delays may differ by this much (under 1 ms as a rule; up to 28 ms measured on a loaded
#: machine).
TOLERANCE = 0.05
#: The share of a global limit a backlog gets. A deferred message comes back a few ms after
#: its retry time, now and then less late than the start whose place it takes: the store
#: tells it the milliseconds until that start leaves its window (a short refusal, up to
#: SHORT_WAIT), the worker waits that in place or defers the message by that much, and the
#: start is used. A longer refusal sends the message to the end of the line, and that start
#: is lost (measured: 39-40 of 40 in 4 s, 99.8% over 35 runs; 197 of 200 in 20 s).
USED_AT_LEAST = 0.95


def starts(marks: Path) -> list[tuple[float, int, int]]:
    """(time, pid, n) of every start so far, earliest first."""
    path = marks / "starts"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted((float(t), int(pid), int(n)) for t, pid, n in (line.split() for line in lines))


def granted(marks: Path) -> list[int]:
    """The store's grants the tasks copied, by Redis's clock (microseconds), earliest first."""
    path = marks / "granted"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted({member: int(score) for member, score in map(str.split, lines)}.values())


def test_each_process_keeps_its_own_limit(
    supervise: Any, basic: Any, marks: Path, tmp_path: Path
) -> None:
    (tmp_path / "limited.py").write_text(APP.format(rate="5/s"))  # a start every 0.2 s each
    supervisor = supervise("-P", "3", "-c", "4", "-l", "debug", app="limited:app")
    processes = supervisor.pids_ready(3)
    sent = [basic.app.send_task("rl.per_worker", (n,)) for n in range(36)]
    assert sorted(r.get(timeout=30) for r in sent) == list(range(36))
    recorded = starts(marks)
    assert {n for _, _, n in recorded} == set(range(36))  # each at least once
    by_process = {pid: [t for t, p, _ in recorded if p == pid] for pid in processes}
    assert sum(map(len, by_process.values())) == len(recorded)
    for pid, times in by_process.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.2 - TOLERANCE for gap in gaps), (pid, gaps)
    busiest = max(map(len, by_process.values()))
    assert busiest < 36  # the backlog was shared, not kept by whoever took it first
    assert "rate limited (5/s, worker scope): back in the queue" in supervisor.log()


def test_the_processes_share_one_global_limit_and_use_all_of_it(
    supervise: Any, basic: Any, marks: Path, tmp_path: Path
) -> None:
    limit, period, duration = 10, 1.0, 4.0
    (tmp_path / "limited.py").write_text(APP.format(rate=f"{limit}/s"))
    supervisor = supervise("-P", "3", "-c", "4", "-l", "debug", app="limited:app")
    processes = supervisor.pids_ready(3)
    backlog = int(limit * (duration + 2))  # more than the run can start: never short of work
    sent = [basic.app.send_task("rl.global", (n,)) for n in range(backlog)]
    assert sorted(r.get(timeout=30) for r in sent) == list(range(backlog))
    recorded = starts(marks)
    times = [t for t, _, _ in recorded]
    assert {n for _, _, n in recorded} == set(range(backlog))  # each at least once
    # Every start was granted by the store, no period of its clock holds more than the limit.
    grants = granted(marks)
    assert len(grants) == len(recorded)
    crowded = [
        (grants[n - limit], grants[n])
        for n in range(limit, len(grants))
        if grants[n] - grants[n - limit] < period * 1_000_000
    ]
    assert not crowded, f"{limit + 1} grants within {period} s: {crowded[:3]}"
    # A task records its start a little later than its grant.
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t < start + period - TOLERANCE]
        assert len(in_window) <= limit, (start, in_window)
    first = times[0]
    used = [t for t in times if t < first + duration]
    assert len(used) >= USED_AT_LEAST * limit * duration, [round(t - first, 3) for t in times]
    assert {pid for _, pid, _ in recorded} == set(processes)  # one budget, every process
    assert "rate limited (10/s, global scope): back in the queue" in supervisor.log()
