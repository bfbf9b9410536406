"""The worker command's garbage-collector settings (run in a child: they are process-wide)."""

from __future__ import annotations

import subprocess
import sys

from celeriac.worker.process import GC_THRESHOLD

CHILD = """
import gc, weakref
from celeriac.worker.process import GC_THRESHOLD, prepare_worker_process

class Node:
    pass

prepare_worker_process()
assert gc.get_threshold()[0] == GC_THRESHOLD, gc.get_threshold()
assert gc.get_freeze_count() > 0
collected = []
for _ in range(3 * GC_THRESHOLD // 2):
    node = Node()
    node.self = node  # a cycle that only the collector can free
    weakref.finalize(node, collected.append, 1)
    del node
# No gc.collect(): the raised threshold alone must have freed most cycles already.
print(len(collected))
"""


def test_worker_process_freezes_startup_objects_and_still_collects_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert int(out.stdout) >= GC_THRESHOLD  # of 1.5 times that
