"""``celery -A interop.peers.celery_beat beat``: the real-Celery peer with a schedule."""

from __future__ import annotations

from interop.peers.beat_entry import beat_schedule
from interop.peers.celery_app import app

app.conf.beat_schedule = beat_schedule()

__all__ = ["app"]
