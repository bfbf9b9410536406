"""App signals, as Celery projects connect to them: ``@app.on_after_configure.connect``.

Celery's periodic-task recipe adds entries from a receiver of ``on_after_configure`` (or
``on_after_finalize``, once the task modules are imported)::

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender, **kwargs):
        sender.add_periodic_task(10.0, ping.s("hello"), name="ping every 10 s")

celeriac sends both once, from :meth:`~celeriac.app.Celery.finalize`, after the deferred
task modules are imported: a worker, ``celeriac beat`` and anything that reads ``app.tasks``
finalize the app. Receivers are kept for the life of the app (Celery keeps them by weak
reference unless told otherwise; a module-level function lives as long either way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

logger = logging.getLogger("celeriac")

Receiver = Callable[..., Any]
R = TypeVar("R", bound=Receiver)


class Signal:
    """Receivers called with ``sender`` and keyword arguments when the signal is sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[tuple[object, Receiver, object | None]] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"

    @overload
    def connect(self, receiver: R, /) -> R: ...
    @overload
    def connect(
        self,
        receiver: None = None,
        /,
        *,
        sender: object | None = None,
        weak: bool = True,
        dispatch_uid: object | None = None,
    ) -> Callable[[R], R]: ...
    def connect(
        self,
        receiver: R | None = None,
        /,
        *,
        sender: object | None = None,
        weak: bool = True,
        dispatch_uid: object | None = None,
    ) -> R | Callable[[R], R]:
        """Connect ``receiver`` (for ``sender`` only, if given); as a decorator, with or
        without arguments. A second receiver with the same ``dispatch_uid`` (or the same
        receiver) is connected once. ``weak`` is accepted for Celery's code."""

        def connecting(fn: R) -> R:
            key = dispatch_uid if dispatch_uid is not None else fn
            if not any(known == key for known, _, _ in self._receivers):
                self._receivers.append((key, fn, sender))
            return fn

        return connecting if receiver is None else connecting(receiver)

    def disconnect(self, receiver: Receiver | None = None, dispatch_uid: object = None) -> bool:
        key = dispatch_uid if dispatch_uid is not None else receiver
        kept = [entry for entry in self._receivers if entry[0] != key]
        removed = len(kept) < len(self._receivers)
        self._receivers = kept
        return removed

    def send(self, sender: object, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver connected for ``sender`` (or for any); what each returned.
        A receiver that raises stops the sending with its error, as Celery's ``send`` does
        for these app signals."""
        return [
            (fn, fn(sender=sender, signal=self, **named))
            for _, fn, wanted in list(self._receivers)
            if wanted is None or wanted is sender
        ]
