"""Finding task modules: ``autodiscover_tasks``'s imports of ``<package>.tasks``, and the
packages of a Django project (its ``INSTALLED_APPS``) when none are given."""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable, Iterable

from celeriac.errors import ConfigurationError

#: What ``autodiscover_tasks`` searches: package names, a callable returning them (called
#: when the app is finalized), or None for Django's installed apps.
Packages = Iterable[str] | Callable[[], Iterable[str]] | None


def discover(packages: Packages, related_name: str | None) -> list[str]:
    """Import ``<package>.<related_name>`` of each package (Django's installed apps when
    ``packages`` is None); the names of the modules imported."""
    if packages is None:
        names: Iterable[str] = _django_installed_apps()
    else:
        names = packages() if callable(packages) else packages
    found = [related_module(package, related_name) for package in names]
    return [module.__name__ for module in found if module is not None]


def _django_installed_apps() -> list[str]:
    """The packages of Django's ``INSTALLED_APPS``, after ``django.setup()`` if the project
    has not called it (as Celery's Django fix-up does). Django is imported only here, and
    only for a project that configured it: celeriac does not need Django."""
    configured = bool(os.environ.get("DJANGO_SETTINGS_MODULE"))
    if not configured and "django.conf" in sys.modules:
        configured = sys.modules["django.conf"].settings.configured  # settings.configure()
    fix = "or pass the packages to search: app.autodiscover_tasks(['app1', 'app2'])"
    if not configured:
        raise ConfigurationError(
            "autodiscover_tasks() without packages searches Django's INSTALLED_APPS, but"
            " Django is not configured (DJANGO_SETTINGS_MODULE is not set): set it before"
            f" the app is finalized (os.environ.setdefault in proj/celery.py), {fix}"
        )
    try:  # by name: Django is untyped, and absent where it is not used
        django = importlib.import_module("django")
        apps = importlib.import_module("django.apps").apps
    except ImportError as exc:
        raise ConfigurationError(
            "autodiscover_tasks() without packages searches Django's INSTALLED_APPS, but"
            f" Django cannot be imported ({exc}): install it, {fix}"
        ) from exc
    if not apps.apps_ready:
        django.setup()
    return [app_config.name for app_config in apps.get_app_configs()]


def related_module(package: str, related_name: str | None) -> types.ModuleType | None:
    """``<package>.<related_name>`` imported, or None when the package has no such module
    (Celery's ``find_related_module``): an import error from inside the module is raised."""
    module = importlib.import_module(package)
    if not related_name:
        return module
    module_name = f"{package}.{related_name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        if missing.name == module_name:
            return None
        raise
