"""What is current in this process: its apps, the current app, the task being run.

The client's leaf: ``app``, ``task``, ``sending`` and ``result`` all read it, and it imports
none of them (the names under ``TYPE_CHECKING`` are types only), so they need not import
each other to find the current app or request.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celery
    from celeriac.task import Request


class Apps:
    """Every app made in this process, the shared tasks each gets, and which is current:
    the one set current in this thread, else the default, else the last one set current
    (Celery's order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: list[Celery] = []
        self._shared: list[Callable[[Celery], None]] = []
        self._thread = threading.local()
        self._default: Celery | None = None
        self._latest: Celery | None = None

    def made(self, app: Celery) -> list[Callable[[Celery], None]]:
        """Record a new app; the shared tasks' registrations it must run."""
        with self._lock:
            self._made.append(app)
            return list(self._shared)

    def share(self, register: Callable[[Celery], None]) -> list[Celery]:
        """Record a shared task's registration, for every later app; the apps made so far,
        which it must be run on now."""
        with self._lock:
            self._shared.append(register)
            return list(self._made)

    def set_current(self, app: Celery) -> None:
        self._thread.app = app
        with self._lock:
            self._latest = app

    def set_default(self, app: Celery) -> None:
        with self._lock:
            self._default = app

    def current(self) -> Celery:
        """The current app; with none at all, an error (Celery would make a hidden default
        app, whose broker is not the one the workers read: tasks sent there never run)."""
        current: Celery | None = getattr(self._thread, "app", None)
        if current is not None:
            return current
        with self._lock:
            found = self._default or self._latest
        if found is None:
            raise ConfigurationError(
                "no Celery app is configured, so there is no broker to send to: create the app"
                " (Celery('proj', broker=...)) before calling a @shared_task or using"
                " current_app, or pass app= (AsyncResult(id, app=app))"
            )
        return found


#: This process's apps.
apps = Apps()


def get_current_app() -> Celery:
    """The app a shared task, ``current_app`` and ``AsyncResult(id)`` use, as in Celery: the
    one set current in this thread (``app.set_current()``, or created here with
    ``set_as_current=True``), else the default (``app.set_default()``), else the last app
    created with ``set_as_current=True``; with no app at all, a ``ConfigurationError``."""
    return apps.current()


class _CurrentApp:
    """``current_app``: stands for :func:`get_current_app`'s answer at each use, as Celery's
    ``celery.current_app`` proxy does (so a module can import it before the app exists)."""

    __slots__ = ()

    def _get_current_object(self) -> Celery:
        return get_current_app()

    def __getattr__(self, name: str) -> Any:
        return getattr(get_current_app(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(get_current_app(), name, value)

    def __repr__(self) -> str:
        try:
            return f"<current_app: {get_current_app()!r}>"
        except ConfigurationError:
            return "<current_app: no app configured>"


#: The current app (see :func:`get_current_app`), resolved at each attribute access.
current_app: Celery = cast("Celery", _CurrentApp())

#: The request of the task this context runs (None outside a task).
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "celeriac_current_request", default=None
)

#: Set while a worker runs a task, so ``get()`` can refuse to deadlock it.
inside_task: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "celeriac_inside_task", default=False
)
