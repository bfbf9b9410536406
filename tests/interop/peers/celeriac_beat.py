"""``celeriac -A interop.peers.celeriac_beat:app beat``: the celeriac peer with a schedule."""

from __future__ import annotations

from interop.peers.beat_entry import beat_schedule
from interop.peers.celeriac_app import app

app.conf.beat_schedule = beat_schedule()
app.conf.beat_failover_timeout = 4.0

__all__ = ["app"]
