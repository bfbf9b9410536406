"""Settings celeriac accepts do what they say: a value celeriac would not honour is refused with
the reason and what celeriac does instead, never kept and ignored."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from celeriac import Celery
from celeriac import config as config_module
from celeriac.config import Settings
from celeriac.errors import ConfigurationError

SOURCE = Path(__file__).resolve().parents[2] / "src" / "celeriac"
#: Settings accepted for Celery configs that change nothing celeriac does (the docs table says
#: why). None now: enable_utc chooses the zone crontabs are read in without a timezone.
ACCEPTED_AS_DOCUMENTATION: set[str] = set()


def app() -> Celery:
    return Celery("t", broker="memory://", set_as_current=False)


@pytest.mark.parametrize("value", ["msgpack", "pickle", "yaml", "application/x-python-serialize"])
def test_a_result_serializer_other_than_json_is_refused_with_the_reason(value: str) -> None:
    why = rf"result_serializer' is '{re.escape(value)}', but celeriac stores every result as JSON"
    with pytest.raises(ConfigurationError, match=why):
        app().conf.update(result_serializer=value)
    with pytest.raises(ConfigurationError, match="set it to 'json' or leave it out"):
        app().conf.CELERY_RESULT_SERIALIZER = value
    with pytest.raises(ConfigurationError, match="result_serializer"):
        app().config_from_object({"result_serializer": value})


@pytest.mark.parametrize("value", ["json", "application/json", "JSON"])
def test_a_json_result_serializer_is_accepted(value: str) -> None:
    conf = app().conf
    conf.result_serializer = value
    assert conf.result_serializer == value


def test_a_time_zone_celery_could_not_load_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'timezone' is 'Europe/Pariss', which is not a"):
        app().conf.update(timezone="Europe/Pariss")
    with pytest.raises(ConfigurationError, match="timezone"):
        app().conf.CELERY_TIMEZONE = "nowhere"


def test_a_real_time_zone_and_enable_utc_are_accepted() -> None:
    conf = app().conf
    conf.update(timezone="Europe/Paris", enable_utc=False)
    assert (conf.timezone, conf.enable_utc) == ("Europe/Paris", False)
    conf.update(timezone=None, enable_utc=True)
    assert conf.timezone is None


def test_every_setting_is_read_or_checked() -> None:
    """A setting no module reads is one accepted and ignored: it must be read, have its
    value checked in config.py, or be listed above with the docs saying why."""
    skipped = ("config.py", "_celery_settings.py")  # the settings, and Celery's names
    sources = [p.read_text() for p in SOURCE.rglob("*.py") if p.name not in skipped]
    checked = set(getattr(config_module, "_VALUE_CHECKS", {}))
    unread = [
        f.name
        for f in dataclasses.fields(Settings)
        if f.init
        and not any(re.search(rf"\b{f.name}\b", text) for text in sources)
        and f.name not in checked | ACCEPTED_AS_DOCUMENTATION
    ]
    assert unread == []
