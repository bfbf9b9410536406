"""Celery's Lamport clock (``app.clock``): the logical time that orders remote-control
messages and events across processes whose wall clocks disagree.

Every message a process sends carries ``forward()``; every message it receives moves its
own clock past the sender's with ``adjust()``. ``inspect clock`` and the ``clock`` field
of events and ``stats`` report it, and Celery's event state orders events by it.
"""

from __future__ import annotations

import threading


class LamportClock:
    """A counter that only moves forward; safe to share between threads (a sync client and
    the worker's loop can both send)."""

    def __init__(self, initial: int = 0) -> None:
        self._value = initial
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._value

    def forward(self) -> int:
        """The time of a message sent now."""
        with self._lock:
            self._value += 1
            return self._value

    def adjust(self, other: int) -> int:
        """Account for a message received with time ``other``: past both clocks."""
        with self._lock:
            self._value = max(self._value, other) + 1
            return self._value
