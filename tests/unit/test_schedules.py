"""celeriac.schedules: intervals, crontab fields and strings, storage form, what an entry
may hold. Daylight-saving time and the calendar are in test_schedules_calendar.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from celeriac.schedules import (
    Schedule,
    as_schedule,
    crontab,
    schedule,
    schedule_from_json,
    solar,
)

NEW_YORK = ZoneInfo("America/New_York")


def at(text: str) -> datetime:
    """An aware UTC instant from ISO text without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- intervals -----------------------------------------------------------------------------


def test_an_interval_runs_every_period_after_the_previous_slot() -> None:
    every = schedule(30)
    assert every.run_every == timedelta(seconds=30)
    assert every.next_run(at("2026-01-01T00:00:10"), UTC) == at("2026-01-01T00:00:40")


def test_an_interval_does_not_drift_over_many_slots() -> None:
    every = schedule(0.1)  # a tenth of a second: float sums would drift, timedeltas do not
    slot = at("2026-01-01T00:00:00")
    for _ in range(100_000):
        next_slot = every.next_run(slot, UTC)
        assert next_slot is not None
        slot = next_slot
    assert slot == at("2026-01-01T02:46:40")


def test_an_interval_takes_a_timedelta() -> None:
    assert schedule(timedelta(minutes=5)).next_run(at("2026-01-01T00:00:00"), UTC) == at(
        "2026-01-01T00:05:00"
    )


def test_an_interval_adds_real_time_across_a_dst_change_whatever_zone_after_is_in() -> None:
    # 01:30 EST on the spring-forward day plus one hour is 03:30 EDT, not the wall's 02:30.
    after = datetime(2026, 3, 8, 1, 30, tzinfo=NEW_YORK)
    result = schedule(3600).next_run(after, NEW_YORK)
    assert result == at("2026-03-08T07:30:00")
    assert result is not None and result.tzinfo is UTC


def test_a_relative_interval_runs_on_the_clock_multiples_of_its_period() -> None:
    quarter = schedule(timedelta(minutes=15), relative=True)
    assert quarter.next_run(at("2026-01-01T10:07:13"), UTC) == at("2026-01-01T10:15:00")
    # strictly after: a slot on a multiple moves to the next multiple
    assert quarter.next_run(at("2026-01-01T10:15:00"), UTC) == at("2026-01-01T10:30:00")
    hourly = schedule(3600, relative=True)
    assert hourly.next_run(at("2026-01-01T23:59:59.5"), UTC) == at("2026-01-02T00:00:00")


def test_a_relative_interval_aligns_in_utc_whatever_the_zone() -> None:
    # UTC-05:00 at 10:07 local is 15:07 UTC: the next UTC quarter hour is 15:15.
    after = datetime(2026, 1, 1, 10, 7, tzinfo=timezone(timedelta(hours=-5)))
    result = schedule(900, relative=True).next_run(after, NEW_YORK)
    assert result == at("2026-01-01T15:15:00")


def test_a_relative_interval_that_does_not_divide_a_day_keeps_a_grid_from_the_epoch() -> None:
    seven = schedule(7 * 60, relative=True)
    slot = seven.next_run(at("2026-01-01T00:00:00"), UTC)
    assert slot is not None
    elapsed = slot - datetime(1970, 1, 1, tzinfo=UTC)
    assert elapsed % timedelta(minutes=7) == timedelta(0)
    assert timedelta(0) < slot - at("2026-01-01T00:00:00") <= timedelta(minutes=7)
    two_days = schedule(timedelta(days=2), relative=True)
    # 2026-01-01 is day 20454 of the epoch, an even one: the grid has it and the 3rd.
    assert two_days.next_run(at("2026-01-01T12:00:00"), UTC) == at("2026-01-03T00:00:00")


@pytest.mark.parametrize("every", [0, -1, 0.0, timedelta(0), timedelta(seconds=-5), 1e-9])
def test_a_zero_or_negative_interval_is_refused(every: float | timedelta) -> None:
    with pytest.raises(ValueError, match="run_every"):
        schedule(every)


@pytest.mark.parametrize("every", [float("nan"), float("inf")])
def test_an_interval_that_is_not_finite_is_refused(every: float) -> None:
    with pytest.raises(ValueError, match="run_every"):
        schedule(every)


@pytest.mark.parametrize("every", ["30", True, None])
def test_an_interval_that_is_not_a_number_is_refused(every: Any) -> None:
    with pytest.raises(TypeError, match="run_every"):
        schedule(every)


def test_a_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        schedule(30).next_run(datetime(2026, 1, 1), UTC)
    with pytest.raises(ValueError, match="naive"):
        crontab().next_run(datetime(2026, 1, 1), UTC)


def test_an_interval_past_the_end_of_time_never_runs_again() -> None:
    assert schedule(timedelta(days=2)).next_run(datetime.max.replace(tzinfo=UTC), UTC) is None


def test_intervals_compare_and_show_their_arguments() -> None:
    assert schedule(30) == schedule(timedelta(seconds=30))
    assert schedule(30) != schedule(30, relative=True)
    assert len({schedule(30), schedule(30.0)}) == 1
    assert repr(schedule(30)) == "schedule(run_every=30.0)"
    assert repr(schedule(1.5, relative=True)) == "schedule(run_every=1.5, relative=True)"


# -- crontab fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minute", "expected"),
    [
        ("*", set(range(60))),
        ("*/15", {0, 15, 30, 45}),
        ("5", {5}),
        (5, {5}),
        ({0, 30}, {0, 30}),
        ([1, 2, 3], {1, 2, 3}),
        ("1-5", {1, 2, 3, 4, 5}),
        ("1,3,5", {1, 3, 5}),
        ("1-30/5", {1, 6, 11, 16, 21, 26}),
        ("10-50/10,55", {10, 20, 30, 40, 50, 55}),
        ("50/5", {50, 55}),  # a start and a step: from the start to the field's end
        ("58-2", {58, 59, 0, 1, 2}),  # a range that wraps around the end
        (" 1 , 2 ", {1, 2}),
        (["1-3", 7], {1, 2, 3, 7}),
    ],
)
def test_minute_forms(minute: Any, expected: set[int]) -> None:
    assert crontab(minute=minute).minute == expected


@pytest.mark.parametrize(
    ("hour", "expected"),
    [
        ("*", set(range(24))),
        ("*/6", {0, 6, 12, 18}),
        ("9-17", set(range(9, 18))),
        ("22-1", {22, 23, 0, 1}),
    ],
)
def test_hour_forms(hour: str, expected: set[int]) -> None:
    assert crontab(hour=hour).hour == expected


@pytest.mark.parametrize(
    ("day_of_week", "expected"),
    [
        ("*", {0, 1, 2, 3, 4, 5, 6}),
        ("mon-fri", {1, 2, 3, 4, 5}),
        ("sun,sat", {0, 6}),
        ("SUN,Sat", {0, 6}),
        ("monday,friday", {1, 5}),
        (0, {0}),
        (7, {0}),  # 0 and 7 are both Sunday, as in cron
        ("7", {0}),
        ("5-7", {5, 6, 0}),
        ("fri-mon", {5, 6, 0, 1}),
        ("sat-sun", {6, 0}),
        ("*/2", {0, 2, 4, 6}),
        ({1, 7}, {1, 0}),
    ],
)
def test_day_of_week_forms(day_of_week: Any, expected: set[int]) -> None:
    assert crontab(day_of_week=day_of_week).day_of_week == expected


@pytest.mark.parametrize(
    ("month_of_year", "expected"),
    [
        ("*", set(range(1, 13))),
        ("jan-mar", {1, 2, 3}),
        ("Dec,jan", {12, 1}),
        ("february", {2}),
        ("*/3", {1, 4, 7, 10}),
        ("nov-feb", {11, 12, 1, 2}),
        (6, {6}),
    ],
)
def test_month_of_year_forms(month_of_year: Any, expected: set[int]) -> None:
    assert crontab(month_of_year=month_of_year).month_of_year == expected


@pytest.mark.parametrize(
    ("day_of_month", "expected"),
    [("*", set(range(1, 32))), ("*/10", {1, 11, 21, 31}), ("1,15", {1, 15}), ("31", {31})],
)
def test_day_of_month_forms(day_of_month: str, expected: set[int]) -> None:
    assert crontab(day_of_month=day_of_month).day_of_month == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("minute", "60"),
        ("minute", -1),
        ("minute", "-1"),
        ("minute", "1-60"),
        ("minute", "*/0"),
        ("minute", "*/x"),
        ("minute", "a"),
        ("minute", ""),
        ("minute", "1,,2"),
        ("minute", "1-2-3"),
        ("minute", "mon"),  # names belong to their own fields
        ("minute", set()),
        ("minute", 1.5),
        ("minute", True),
        ("minute", None),
        ("hour", 24),
        ("hour", "*/24/2"),
        ("day_of_week", 8),
        ("day_of_week", "mon-xyz"),
        ("day_of_week", "mo"),
        ("day_of_month", 0),
        ("day_of_month", "32"),
        ("month_of_year", 13),
        ("month_of_year", "0"),
        ("month_of_year", "jan-sun"),
    ],
)
def test_a_bad_field_is_refused_naming_the_field_and_the_value(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as caught:
        crontab(**{field: value})
    assert field in str(caught.value)
    assert repr(value) in str(caught.value)


def test_from_string_reads_cron_order() -> None:
    # minute hour day_of_month month_of_year day_of_week
    parsed = crontab.from_string("*/5 9-17 1,15 jan-mar mon-fri")
    assert parsed == crontab(
        minute="*/5",
        hour="9-17",
        day_of_month="1,15",
        month_of_year="jan-mar",
        day_of_week="mon-fri",
    )
    assert parsed.minute == set(range(0, 60, 5))
    assert parsed.day_of_week == {1, 2, 3, 4, 5}
    assert crontab.from_string("  0   0 * * *  ") == crontab(minute=0, hour=0)


@pytest.mark.parametrize("text", ["* * * *", "* * * * * *", "", "61 * * * *"])
def test_from_string_refuses_a_bad_line(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        crontab.from_string(text)
    assert ("minute='61'" if "61" in text else repr(text)) in str(caught.value)


def test_crontabs_compare_by_what_they_match() -> None:
    assert crontab(minute="0,30") == crontab(minute={30, 0})
    assert crontab(day_of_week="sun") == crontab(day_of_week=7)
    assert crontab(minute=0) != crontab(minute=1)
    assert crontab() != schedule(60)
    assert len({crontab(hour="*/12"), crontab(hour="0,12")}) == 1


def test_a_crontab_shows_its_fields_as_written() -> None:
    text = repr(crontab(minute="*/15", hour=[9, 17], day_of_week="mon-fri"))
    assert text == (
        "crontab(minute='*/15', hour='9,17', day_of_week='mon-fri', day_of_month='*',"
        " month_of_year='*')"
    )


# -- storage form --------------------------------------------------------------------------


def test_an_interval_is_stored_in_redbeats_shape() -> None:
    assert schedule(30).to_json() == {"__type__": "interval", "every": 30.0, "relative": False}
    assert schedule(timedelta(minutes=1), relative=True).to_json() == {
        "__type__": "interval",
        "every": 60.0,
        "relative": True,
    }


def test_a_crontab_is_stored_in_redbeats_shape() -> None:
    assert crontab(minute="*/15").to_json() == {
        "__type__": "crontab",
        "minute": "*/15",
        "hour": "*",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    }
    stored = crontab(minute=0, hour={18, 6}, day_of_week="mon-fri").to_json()
    assert (stored["minute"], stored["hour"], stored["day_of_week"]) == ("0", "6,18", "mon-fri")


@pytest.mark.parametrize(
    "original",
    [
        schedule(30),
        schedule(0.25, relative=True),
        schedule(timedelta(days=3)),
        crontab(),
        crontab(minute="10-50/10,55", hour="9-17", day_of_week="mon-fri"),
        crontab(day_of_month=29, month_of_year="feb"),
        crontab(minute=[0, 30], hour=7, day_of_week=7),
        crontab.from_string("*/5 9-17 * jan-mar sat,sun"),
    ],
    ids=repr,
)
def test_the_storage_form_round_trips_through_json_text(original: Schedule) -> None:
    text = json.dumps(original.to_json())
    restored = schedule_from_json(json.loads(text))
    assert restored == original
    assert type(restored) is type(original)
    assert restored.to_json() == original.to_json()


def test_a_crontab_stored_with_ints_and_lists_is_read() -> None:
    # RedBeat keeps what the user wrote, which may be an int or a list.
    stored = {"__type__": "crontab", "minute": 0, "hour": [6, 18], "day_of_week": "*",
              "day_of_month": "*", "month_of_year": "*"}  # fmt: skip
    assert schedule_from_json(stored) == crontab(minute=0, hour="6,18")


def test_a_crontab_stored_without_some_fields_reads_them_as_star() -> None:
    assert schedule_from_json({"__type__": "crontab", "minute": "5"}) == crontab(minute=5)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "__type__"),
        ({"every": 30}, "__type__"),
        ({"__type__": "weekly"}, "'weekly'"),
        ({"__type__": "interval"}, "every"),
        ({"__type__": "interval", "every": "30"}, "every"),
        ({"__type__": "interval", "every": True}, "every"),
        ({"__type__": "interval", "every": 0}, "run_every"),
        ({"__type__": "interval", "every": 30, "relative": "yes"}, "relative"),
        ({"__type__": "interval", "every": 30, "period": 5}, "period"),
        ({"__type__": "crontab", "minute": "61"}, "minute"),
        ({"__type__": "crontab", "minutes": "5"}, "minutes"),
        ({"__type__": "crontab", "hour": 1.5}, "hour"),
        ({"__type__": "solar", "event": "sunrise", "lat": 0, "lon": 0}, "solar"),
    ],
)
def test_a_bad_storage_form_is_refused_naming_the_problem(
    data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        schedule_from_json(data)


def test_a_storage_form_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="mapping"):
        schedule_from_json([("__type__", "interval")])  # type: ignore[arg-type]


# -- what a beat_schedule entry may hold ---------------------------------------------------


def test_numbers_and_timedeltas_become_intervals() -> None:
    assert as_schedule(30) == schedule(30)
    assert as_schedule(2.5) == schedule(2.5)
    assert as_schedule(timedelta(hours=1)) == schedule(3600)


def test_schedules_are_taken_as_they_are() -> None:
    cron = crontab(minute=0)
    every = schedule(10, relative=True)
    assert as_schedule(cron) is cron
    assert as_schedule(every) is every


def test_a_schedule_of_the_users_own_is_taken() -> None:
    class Never:
        def next_run(self, after: datetime, zone: tzinfo) -> datetime | None:
            return None

        def to_json(self) -> dict[str, Any]:
            return {"__type__": "never"}

    never = Never()
    assert isinstance(never, Schedule)
    assert as_schedule(never) is never


@pytest.mark.parametrize("value", ["*/5 * * * *", None, True, [30], {"every": 30}])
def test_anything_else_is_refused_naming_the_value_and_what_is_accepted(value: object) -> None:
    with pytest.raises(TypeError) as caught:
        as_schedule(value)
    message = str(caught.value)
    assert repr(value) in message
    assert "timedelta" in message and "crontab" in message


def test_a_zero_interval_entry_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="run_every"):
        as_schedule(0)


def test_celerys_own_schedule_objects_are_refused_with_the_import_to_use() -> None:
    foreign = type("crontab", (), {"__module__": "celery.schedules"})()
    with pytest.raises(TypeError, match=r"from celeriac\.schedules import"):
        as_schedule(foreign)


# -- solar ---------------------------------------------------------------------------------


def test_solar_is_refused_naming_the_alternative() -> None:
    with pytest.raises(NotImplementedError, match="crontab") as caught:
        solar("sunrise", -37.81753, 144.96715)
    assert "timezone" in str(caught.value)
