"""Which limit a task has in a worker: its option, ``task_annotations``,
``task_default_rate_limit``, ``worker_disable_rate_limits``, remote control; bad values are
refused naming the option or setting."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from celeriac import Celery
from celeriac.errors import ConfigurationError
from celeriac.rates import Rate, parse_rate
from celeriac.worker.rate_limits import RateLimits, TaskRate


def make_app(**settings: Any) -> Celery:
    app = Celery("rl", broker="memory://rl-config", set_as_current=False)
    app.conf.update(**settings)

    @app.task(name="rl.own", rate_limit="10/m")
    def own() -> None: ...

    @app.task(name="rl.plain")
    def plain() -> None: ...

    @app.task(name="rl.other")
    def other() -> None: ...

    return app


def rate_of(app: Celery, name: str) -> str | None:
    limit = RateLimits(app).limit_of(app.tasks[name])
    return None if limit is None else str(limit.rate)


def test_no_setting_no_limit() -> None:
    app = make_app()
    assert rate_of(app, "rl.plain") is None
    assert RateLimits(app).limit_of(app.tasks["rl.own"]) == TaskRate(
        Rate(10.0, 60.0, "10/m"), "worker", "rl.own", 10, 60.0, 10
    )


def test_the_tasks_own_option_wins_over_annotations_and_the_default() -> None:
    app = make_app(
        task_annotations={"rl.own": {"rate_limit": "1/s"}, "*": {"rate_limit": "2/s"}},
        task_default_rate_limit="3/s",
    )
    assert rate_of(app, "rl.own") == "10/m"


def test_a_named_annotation_wins_over_star_and_star_over_the_default() -> None:
    app = make_app(
        task_annotations={"*": {"rate_limit": "2/s"}, "rl.plain": {"rate_limit": "1/s"}},
        task_default_rate_limit="3/s",
    )
    assert rate_of(app, "rl.plain") == "1/s"
    assert rate_of(app, "rl.other") == "2/s"


def test_in_a_list_of_annotations_the_first_match_wins() -> None:
    app = make_app(
        task_annotations=[
            {"rl.other": {"rate_limit": "7/h"}},
            {"rl.plain": {"rate_limit": "1/s"}},
            {"rl.plain": {"rate_limit": "9/s"}, "*": {"rate_limit": "4/m"}},
        ]
    )
    assert rate_of(app, "rl.plain") == "1/s"
    assert rate_of(app, "rl.other") == "7/h"
    assert rate_of(app, "rl.own") == "10/m"


def test_the_default_limits_tasks_without_one() -> None:
    app = make_app(task_default_rate_limit=5)
    assert rate_of(app, "rl.plain") == "5"
    assert rate_of(app, "rl.own") == "10/m"


def test_an_own_zero_means_no_limit_even_with_a_default() -> None:
    app = make_app(task_default_rate_limit="5/s")

    @app.task(name="rl.free", rate_limit=0)
    def free() -> None: ...

    assert rate_of(app, "rl.free") is None


def test_disabling_rate_limits_takes_every_limit_off() -> None:
    app = make_app(
        worker_disable_rate_limits=True,
        task_default_rate_limit="1/s",
        task_annotations={"*": {"rate_limit": "2/s"}},
    )
    limits = RateLimits(app)
    assert [limits.limit_of(app.tasks[n]) for n in ("rl.own", "rl.plain")] == [None, None]
    limits.set("rl.plain", parse_rate("3/s"))
    assert limits.limit_of(app.tasks["rl.plain"]) is None
    assert str(limits.rate_of(app.tasks["rl.plain"])) == "3/s"  # what inspect shows


def test_remote_control_overrides_every_source_until_changed_again() -> None:
    app = make_app(task_default_rate_limit="1/s")
    limits = RateLimits(app)
    assert str(limits.rate_of(app.tasks["rl.own"])) == "10/m"
    limits.set("rl.own", parse_rate("5/s"))
    assert str(limits.rate_of(app.tasks["rl.own"])) == "5/s"
    limits.set("rl.own", None)
    assert limits.limit_of(app.tasks["rl.own"]) is None


def test_scope_key_and_burst_come_from_the_option_then_the_annotations() -> None:
    app = make_app(
        task_annotations={
            "rl.plain": {"rate_limit": "6/s", "rate_limit_scope": "global"},
            "*": {"rate_limit_key": "shared-api", "rate_limit_burst": 2},
        }
    )

    @app.task(name="rl.mine", rate_limit="0.5/s", rate_limit_scope="global", rate_limit_key="k")
    def mine() -> None: ...

    limits = RateLimits(app)
    assert limits.limit_of(app.tasks["rl.plain"]) == TaskRate(
        Rate(6.0, 1.0, "6/s"), "global", "shared-api", 6, 1.0, 2
    )
    # a fractional limit: one start per interval, as the store counts whole starts (and a
    # burst cut to that one: the "*" burst of 2 is over it)
    assert limits.limit_of(app.tasks["rl.mine"]) == TaskRate(
        Rate(0.5, 1.0, "0.5/s"), "global", "k", 1, 2.0, 1
    )
    assert limits.global_tasks() == ["rl.mine", "rl.plain"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "10/d"}, "task 'rl.bad': bad rate limit '10/d'"),
        ({"rate_limit": "1/s", "rate_limit_scope": "cluster"}, "rate_limit_scope is 'cluster'"),
        ({"rate_limit_key": ""}, "rate_limit_key is ''"),
        ({"rate_limit_burst": 0}, "rate_limit_burst is 0"),
    ],
)
def test_a_bad_task_option_is_refused_at_decoration(options: dict[str, Any], message: str) -> None:
    app = make_app()
    with pytest.raises(ValueError, match=message):
        app.task(name="rl.bad", **options)(lambda: None)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task_default_rate_limit": "fast"}, r"task_default_rate_limit: bad rate limit 'fast'"),
        (
            {"task_annotations": {"rl.plain": {"rate_limit": "1/d"}}},
            r"task_annotations\['rl.plain'\]: bad rate limit '1/d'",
        ),
        (
            {"task_annotations": [{}, {"*": {"rate_limit_scope": "x"}}]},
            r"task_annotations\[1\]\['\*'\]: rate_limit_scope is 'x'",
        ),
        ({"task_annotations": {"rl.plain": "1/s"}}, r"task_annotations\['rl.plain'\] is '1/s'"),
        ({"task_annotations": [object]}, r"task_annotations\[0\] is <class 'object'>"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RateLimits(make_app(**settings))


def test_other_annotation_keys_are_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(
        task_annotations=[
            {"rl.plain": {"rate_limit": "1/s", "acks_late": True}},
            {"*": {"time_limit": 3, "acks_late": False}},
        ]
    )
    with caplog.at_level(logging.WARNING, "celeriac.worker"):
        RateLimits(app)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "task_annotations sets 'acks_late', 'time_limit': celeriac reads only rate_limit,"
        " rate_limit_scope, rate_limit_key, rate_limit_burst there, and ignores the rest"
    ]


def test_a_burst_over_the_limit_is_refused_at_start() -> None:
    app = make_app()

    @app.task(name="rl.g", rate_limit="2/s", rate_limit_scope="global", rate_limit_burst=3)
    def g() -> None: ...

    with pytest.raises(ConfigurationError, match=r"task 'rl.g': rate_limit_burst=3 is over"):
        RateLimits(app).check_store(object())  # type: ignore[arg-type]


def test_a_lower_limit_set_at_run_time_cuts_the_burst_to_it() -> None:
    app = make_app()

    @app.task(name="rl.g", rate_limit="20/s", rate_limit_scope="global", rate_limit_burst=8)
    def g() -> None: ...

    limits = RateLimits(app)
    assert limits.limit_of(app.tasks["rl.g"]).burst == 8  # type: ignore[union-attr]
    limits.set("rl.g", parse_rate("2/s"))
    assert limits.limit_of(app.tasks["rl.g"]) == TaskRate(
        Rate(2.0, 1.0, "2/s"), "global", "rl.g", 2, 1.0, 2
    )
