"""celeriac knows every setting name the Celery it is tested against reads: a Celery config
loads without a name refused as a typo of celeriac's (``worker_pool`` is not
``worker_pools``), and each that celeriac does not read is ignored with a warning."""

from __future__ import annotations

import logging

import pytest
from celery.app.defaults import _TO_OLD_KEY, NAMESPACES, flatten

from celeriac import Celery
from celeriac._celery_settings import NAMES, OLD_NAMES
from celeriac.config import setting_name

CELERY_NAMES = {name for name, _ in flatten(NAMESPACES)}
CELERY_OLD_NAMES = set(_TO_OLD_KEY.values())


def test_the_list_is_celerys() -> None:
    assert sorted(NAMES ^ CELERY_NAMES) == []
    assert sorted(OLD_NAMES ^ CELERY_OLD_NAMES) == []


def test_no_setting_of_celerys_is_refused_as_a_typo(caplog: pytest.LogCaptureFixture) -> None:
    django = {f"CELERY_{name.upper()}" for name in CELERY_NAMES}
    ignored = sorted(
        name for name in CELERY_NAMES | CELERY_OLD_NAMES | django if setting_name(name) is None
    )
    app = Celery("t", broker="memory://", set_as_current=False)
    with caplog.at_level(logging.WARNING, logger="celeriac.config"):
        for name in ignored:
            app.conf.update({name: object()})  # kept, whatever its value
    assert len(ignored) > 300
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == len(ignored)
    assert all(message.startswith("Celery's setting ") for message in warned)
