"""Fuzz: rows of every wrong shape written into the embedded broker's table by another
producer, between good tasks, never stop a worker; each ends in the dead letters, or runs as
the valid message it still is."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from celeriac.transports.broker import Broker
from celeriac.transports.sqlite.database import encode_envelope
from poison import (
    draw_many,
    good_envelope,
    json_values,
    mark_app,
    poison_envelopes,
    poison_payloads,
    run_campaign,
)

#: Rows per run in the suite; scripts/poison_campaign.py runs thousands.
COUNT = 300
#: The issue's finding: one byte where an envelope should be.
FOUND: list[tuple[Any, Any]] = [(0, b"\x00")]


def _encodable(envelope: Any) -> bool:
    try:
        encode_envelope(envelope)
    except TypeError:
        return False
    return True


def sqlite_poison(count: int) -> list[tuple[Any, Any]]:
    """``(priority, envelope)`` column values: raw payloads, poison envelopes as the broker
    encodes them, and values of the wrong type in either column."""
    valid = encode_envelope(good_envelope("poison"))
    encoded = poison_envelopes().filter(_encodable).map(encode_envelope)
    envelopes = (
        poison_payloads(valid) | encoded | st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1)
    )
    priorities = (
        st.integers(0, 9) | st.sampled_from(["high", 3.5, -1, 2**40]) | json_values.map(str)
    )
    return FOUND + draw_many(st.tuples(priorities, envelopes), count)


def insert_rows(path: Path, queue: str, rows: Sequence[tuple[Any, Any]]) -> None:
    """As another process writing to the file would (no wake-up for the worker: the good
    tasks after each turn wake it)."""
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO celeriac_messages (queue, priority, visible_at, envelope)"
                " VALUES (?, ?, 0, ?)",
                [(queue, priority, envelope) for priority, envelope in rows],
            )
    finally:
        db.close()


def test_poison_rows_never_stop_the_embedded_worker(tmp_path: Path) -> None:
    path = tmp_path / "celeriac.db"
    queue = f"fuzz-{uuid.uuid4().hex}"
    app, tally = mark_app("fuzz", broker=f"sqlite:///{path}")
    poison = sqlite_poison(COUNT)

    async def inject(broker: Broker, rows: Sequence[tuple[Any, Any]]) -> None:
        await asyncio.to_thread(insert_rows, path, queue, rows)

    asyncio.run(run_campaign(app, tally, poison, inject, queue=queue))
    assert tally.dead >= len(FOUND), tally
