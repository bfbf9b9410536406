"""A caller waiting for a result keeps waiting, until its own timeout, while the result store
cannot be read (issue 17): SQLite's waiters used to get the read's BrokerError at once.

(rpc:// is covered by ``tests/integration/test_rpc_outage.py``; Redis's listener already
reconnects and reads every waited key again.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from celeriac.errors import BrokerError
from celeriac.transports.sqlite import backend as sqlite_backend
from celeriac.transports.sqlite.backend import SQLiteBackend
from services import eventually

WAIT = 10.0
KEEP_WAITING = "waiting callers keep waiting"


def _meta(task_id: str) -> dict[str, Any]:
    return {
        "status": "SUCCESS",
        "result": 42,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }


async def test_sqlite_waiters_keep_waiting_while_the_file_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    reader = SQLiteBackend(url, options={"poll_interval": 0.05})
    writer = SQLiteBackend(url)
    await reader.connect()
    await writer.connect()
    run = reader._db.run
    unreadable = True
    failed_reads: list[float] = []

    async def failing_reads(job: Callable[[Any], Any]) -> Any:
        if unreadable and isinstance(job, partial) and job.func is sqlite_backend._read_ready:
            failed_reads.append(asyncio.get_running_loop().time())
            raise BrokerError("SQLite 'results.db': disk I/O error")
        return await run(job)

    monkeypatch.setattr(reader._db, "run", failing_reads)
    try:
        with caplog.at_level(logging.WARNING, logger="celeriac"):
            waiting = asyncio.ensure_future(reader.wait("t1", WAIT))
            await eventually(lambda: any(KEEP_WAITING in m for m in caplog.messages), WAIT)
            await writer.store("t1", _meta("t1"), expires=60)
            # Stored, but not readable: more reads fail (wake-up, safety polls); it waits.
            before = len(failed_reads)
            await eventually(lambda: waiting.done() or len(failed_reads) >= before + 3, WAIT)
            assert not waiting.done(), waiting
            unreadable = False
            assert (await asyncio.wait_for(waiting, WAIT))["result"] == 42
        assert sum(KEEP_WAITING in m for m in caplog.messages) == 1, caplog.messages
        assert sum("can be read again" in m for m in caplog.messages) == 1, caplog.messages
    finally:
        await reader.close()
        await writer.close()
