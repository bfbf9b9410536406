from __future__ import annotations

import json

import pytest

from celeriac import states
from celeriac.errors import RemoteTaskError
from celeriac.protocol.records import exception_from_dict, exception_to_dict, make_meta
from services import FIXTURES_DIR

FIXTURES = FIXTURES_DIR


def test_success_meta_has_celerys_keys_in_order() -> None:
    meta = make_meta("id1", states.SUCCESS, 5)
    expected = json.loads((FIXTURES / "result-success.json").read_text())["value_decoded"]
    assert list(meta) == list(expected)
    assert meta["date_done"] is not None
    assert make_meta("id1", states.STARTED, None)["date_done"] is None
    with_parent = make_meta("id1", states.SUCCESS, 1, parent_id="p", group_id="g")
    assert with_parent["parent_id"] == "p" and with_parent["group_id"] == "g"


def test_exception_dict_matches_celery_fixture() -> None:
    stored = json.loads((FIXTURES / "result-failure.json").read_text())["value_decoded"]
    assert exception_to_dict(ValueError("kaboom")) == stored["result"]
    rebuilt = exception_from_dict(stored["result"], stored["traceback"])
    assert isinstance(rebuilt, ValueError) and rebuilt.args == ("kaboom",)
    assert "raise ValueError(msg)" in "".join(rebuilt.__notes__)


def test_unimportable_exception_becomes_remote_task_error() -> None:
    stored = json.loads((FIXTURES / "result-failure-custom-exception.json").read_text())
    value = stored["value_decoded"]
    exc = exception_from_dict(value["result"], value["traceback"])
    assert isinstance(exc, RemoteTaskError)
    assert exc.exc_type == value["result"]["exc_type"]
    assert exc.exc_args == value["result"]["exc_message"]
    assert exc.remote_traceback == value["traceback"]


@pytest.mark.parametrize(
    "data",
    [
        {"exc_type": "SystemExit", "exc_module": "builtins", "exc_message": [1]},
        {"exc_type": "print", "exc_module": "builtins", "exc_message": []},
        {"exc_type": "Nope", "exc_module": "no_such_module_x", "exc_message": []},
        "not a dict",
    ],
)
def test_dangerous_or_unknown_types_are_never_instantiated(data: object) -> None:
    assert isinstance(exception_from_dict(data, None), RemoteTaskError)


def test_celerys_own_exceptions_travel_under_celerys_modules() -> None:
    """So that ``except celery.exceptions.TaskRevokedError`` works in a Celery client, and a
    Celery worker's REVOKED record raises celeriac's class here."""
    from celeriac import errors

    stored = exception_to_dict(errors.TaskRevokedError("expired"))
    assert stored == {
        "exc_type": "TaskRevokedError",
        "exc_message": ["expired"],
        "exc_module": "celery.exceptions",
    }
    assert exception_to_dict(errors.TimeLimitExceeded(5))["exc_module"] == "billiard.exceptions"
    rebuilt = exception_from_dict(stored, None)
    assert type(rebuilt) is errors.TaskRevokedError and rebuilt.args == ("expired",)
    limit = {
        "exc_type": "SoftTimeLimitExceeded",
        "exc_message": [],
        "exc_module": "billiard.exceptions",
    }
    assert type(exception_from_dict(limit, None)) is errors.SoftTimeLimitExceeded
