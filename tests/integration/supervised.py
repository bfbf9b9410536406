"""A supervised ``celeriac worker`` command (``-P N``, pools) run as a child process, for the
pool and restart tests."""

from __future__ import annotations

import re

from .conftest import WorkerProcess

READY = re.compile(r"\[.*: INFO/(?P<child>[\w-]+)\] .* ready: pid (?P<pid>\d+)")


class Supervised(WorkerProcess):
    def children(self) -> dict[str, int]:
        """Child name -> pid of every child that logged it was ready (latest per name)."""
        found: dict[str, int] = {}
        for line in self.log().splitlines():
            match = READY.search(line)
            if match:
                found[match["child"]] = int(match["pid"])
        return found

    def pids_ready(self, count: int) -> list[int]:
        self.wait_for(" ready: pid ", count=count)
        return [int(m["pid"]) for line in self.lines if (m := READY.search(line))]
