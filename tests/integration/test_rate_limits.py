"""Rate limits across real worker processes on Redis (broker and result store): with the
worker scope each process starts a limited task at most once per ``period / limit``
(Celery's meaning); the backlog is shared out without any process holding it."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("broker_url", ["redis"], indirect=True),
]

#: Each start's time and process, one line each, written by the task (appends are atomic).
APP = """
import os, time
from basic import app, mark

@app.task(name="rl.per_worker", rate_limit="{rate}")
def per_worker(n):
    mark("starts", f"{{time.time()}} {{os.getpid()}} {{n}}")
    return n
"""
#: A measured start is later than the gate's grant by the task's own start-up: two starts'
#: delays may differ by this much.
TOLERANCE = 0.02


def starts(marks: Path) -> list[tuple[float, int, int]]:
    """(time, pid, n) of every start so far, earliest first."""
    path = marks / "starts"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted((float(t), int(pid), int(n)) for t, pid, n in (line.split() for line in lines))


def test_each_process_keeps_its_own_limit(
    supervise: Any, basic: Any, marks: Path, tmp_path: Path
) -> None:
    (tmp_path / "limited.py").write_text(APP.format(rate="5/s"))  # a start every 0.2 s each
    supervisor = supervise("-P", "3", "-c", "4", "-l", "debug", app="limited:app")
    processes = supervisor.pids_ready(3)
    sent = [basic.app.send_task("rl.per_worker", (n,)) for n in range(36)]
    assert sorted(r.get(timeout=30) for r in sent) == list(range(36))
    recorded = starts(marks)
    assert sorted(n for _, _, n in recorded) == list(range(36))  # each once
    by_process = {pid: [t for t, p, _ in recorded if p == pid] for pid in processes}
    assert sum(map(len, by_process.values())) == 36
    for pid, times in by_process.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.2 - TOLERANCE for gap in gaps), (pid, gaps)
    busiest = max(map(len, by_process.values()))
    assert busiest < 36  # the backlog was shared, not kept by whoever took it first
    assert "rate limited (5/s, worker scope): back in the queue" in supervisor.log()
