"""An app whose resource kills its own process while the worker starts (before it consumes)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

from celeriac import Celery

app = Celery("dies_at_start")


@app.resource
async def native_library() -> AsyncIterator[None]:
    os.kill(os.getpid(), signal.SIGKILL)  # a crash in native code, say
    yield None
