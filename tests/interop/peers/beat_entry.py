"""The periodic task both peers' schedulers send in the beat interop tests: ``interop.add``
with (2, 3) every second, to the queue ``INTEROP_BEAT_QUEUE`` names."""

from __future__ import annotations

import os
from typing import Any


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {
        "add-every-second": {
            "task": "interop.add",
            "schedule": 1.0,
            "args": (2, 3),
            "options": {"queue": os.environ["INTEROP_BEAT_QUEUE"]},
        }
    }
