"""Exceptions the peer tasks raise. Imported by both peers and by the test process, so each
side can rebuild the real class from ``exc_module``/``exc_type``."""

from __future__ import annotations


class InteropError(Exception):
    """A task's own exception with two args (a message and a code)."""


class TransientError(Exception):
    """What ``interop.flaky`` retries on."""
