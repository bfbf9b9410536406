"""Settings, with Celery's lower-case names and celeriac's defaults.

Only names listed in :class:`Settings` exist: an unknown name is an error that suggests the
closest known one, so a typo never silently falls back to a default. Where celeriac's default
differs from Celery's, the field says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celeriac.errors import ConfigurationError

DEFAULT_BROKER_URL = "sqlite:///celeriac.db"
BROKER_URL_ENV = "CELERIAC_BROKER_URL"
RESULT_BACKEND_ENV = "CELERIAC_RESULT_BACKEND"


@dataclass
class Settings:
    """Every setting celeriac reads. Set them with ``app.conf.update(...)`` or attributes."""

    broker_url: str | None = None
    result_backend: str | None = None
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict)
    #: Largest task body accepted, in bytes (celeriac's; Celery has no limit).
    broker_max_message_size: int = 16 * 1024 * 1024

    task_default_queue: str = "celery"
    task_default_priority: int | None = None
    task_queue_max_priority: int | None = None
    task_serializer: str = "json"
    result_serializer: str = "json"
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    #: Unlike Celery (False), celeriac acknowledges after the task ends: at-least-once.
    task_acks_late: bool = True
    task_ignore_result: bool = False
    task_track_started: bool = False
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    task_default_retry_delay: float = 180.0
    task_max_retries: int | None = 3
    result_expires: float | None = 86400.0
    #: Largest encoded result record stored, in bytes (celeriac's; Celery has no limit); a
    #: larger one is stored as a FAILURE that says so. 0: no limit of celeriac's own. The
    #: default equals ``broker_max_message_size`` and RabbitMQ 4's default
    #: ``max_message_size`` (an rpc:// result is a RabbitMQ message), and stays far under
    #: Redis's 512 MB ``proto-max-bulk-len``: every waiter reads a result whole.
    result_max_size: int = 16 * 1024 * 1024

    #: Tasks run at once per worker process (async tasks on the loop; celeriac's default).
    worker_concurrency: int = 100
    worker_prefetch_multiplier: int = 4
    #: Threads that run plain ``def`` tasks (celeriac's); None: min(32, worker_concurrency).
    worker_threads: int | None = None
    #: Seconds a graceful shutdown waits for running tasks before requeueing them (celeriac's).
    worker_shutdown_timeout: float = 30.0
    #: A pool's child process is replaced after this many tasks (Celery's).
    worker_max_tasks_per_child: int | None = None
    #: ... or once its resident memory passes this many KiB (Celery's unit).
    worker_max_memory_per_child: int | None = None
    #: Processes ``celeriac worker`` runs on its ``-Q`` queues (1: no supervisor).
    worker_processes: int = 1
    #: Several pools in one command: name -> {"queues": [...], "processes": N,
    #: "concurrency": N} (see celeriac.worker.pools).
    worker_pools: dict[str, dict[str, Any]] | None = None

    timezone: str | None = None
    enable_utc: bool = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELD_NAMES:
            raise unknown_setting(name)
        object.__setattr__(self, name, value)

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set several settings at once; every name is checked before any is set."""
        merged = {**(values or {}), **more}
        for name in merged:
            if name not in _FIELD_NAMES:
                raise unknown_setting(name)
        for name, value in merged.items():
            setattr(self, name, value)

    def __getitem__(self, name: str) -> Any:
        if name not in _FIELD_NAMES:
            raise unknown_setting(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def effective_broker_url(self) -> str:
        """The broker URL in force: the environment wins over code, then the embedded default."""
        return os.environ.get(BROKER_URL_ENV) or self.broker_url or DEFAULT_BROKER_URL

    def effective_result_backend(self) -> str:
        """The result store in force; by default the broker's own store keeps results (the
        embedded broker's file, or the same Redis database), else the embedded default."""
        configured = os.environ.get(RESULT_BACKEND_ENV) or self.result_backend
        if configured:
            return configured
        broker = self.effective_broker_url()
        if broker.startswith(("sqlite:", "memory:", "redis:", "rediss:")):
            return broker
        return DEFAULT_BROKER_URL

    def effective_worker_threads(self) -> int:
        return self.worker_threads or max(1, min(32, self.worker_concurrency))


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))


def redacted(url: str) -> str:
    """``url`` with its password hidden, for log lines, command output and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def unknown_setting(name: str) -> ConfigurationError:
    import difflib  # only for a misspelt setting

    close = difflib.get_close_matches(name, sorted(_FIELD_NAMES), n=1, cutoff=0.5)
    hint = f": did you mean {close[0]!r}?" if close else ": see docs/configuration.md"
    return ConfigurationError(f"unknown setting {name!r}{hint}")
