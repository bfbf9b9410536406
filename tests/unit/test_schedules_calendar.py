"""celeriac.schedules: a crontab's next run on the calendar and across daylight-saving time,
checked at exact UTC instants (the rules are in the ``celeriac.schedules`` docstring).

New York, 2026: spring forward 8 March (01:59 EST -> 03:00 EDT, 07:00 UTC), fall back
1 November (01:59 EDT -> 01:00 EST, 06:00 UTC). London, 2026: spring forward 29 March
(00:59 GMT -> 02:00 BST, 01:00 UTC), fall back 25 October (01:59 BST -> 01:00 GMT, 01:00 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.schedules import crontab

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
SANTIAGO = ZoneInfo("America/Santiago")


def at(text: str) -> datetime:
    """An aware UTC instant from ISO text without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(cron: crontab, after: datetime, zone: tzinfo, count: int) -> list[str]:
    """The next ``count`` runs, each from the one before, as UTC ISO text."""
    found = []
    for _ in range(count):
        following = cron.next_run(after, zone)
        assert following is not None
        assert following.tzinfo is UTC and following > after
        found.append(following.strftime("%Y-%m-%dT%H:%M"))
        after = following
    return found


# -- the calendar (UTC) --------------------------------------------------------------------


def test_every_minute_runs_on_the_next_minute() -> None:
    assert crontab().next_run(at("2026-05-05T10:00:30"), UTC) == at("2026-05-05T10:01")
    assert crontab().next_run(at("2026-05-05T10:01"), UTC) == at("2026-05-05T10:02")
    assert crontab().next_run(at("2026-12-31T23:59"), UTC) == at("2027-01-01T00:00")


def test_minute_and_hour_lists() -> None:
    cron = crontab(minute="0,30", hour="9-10")
    assert runs(cron, at("2026-05-05T09:15"), UTC, 5) == [
        "2026-05-05T09:30", "2026-05-05T10:00", "2026-05-05T10:30",
        "2026-05-06T09:00", "2026-05-06T09:30",
    ]  # fmt: skip


def test_weekdays_only() -> None:
    # Friday 8 May 2026, 17:00: the next weekday 09:00 is Monday the 11th.
    cron = crontab.from_string("0 9 * * mon-fri")
    assert runs(cron, at("2026-05-08T17:00"), UTC, 2) == ["2026-05-11T09:00", "2026-05-12T09:00"]


def test_the_31st_skips_the_months_without_one() -> None:
    cron = crontab(minute=0, hour=0, day_of_month=31)
    assert runs(cron, at("2026-01-31T00:00"), UTC, 4) == [
        "2026-03-31T00:00", "2026-05-31T00:00", "2026-07-31T00:00", "2026-08-31T00:00",
    ]  # fmt: skip


def test_february_29th_runs_in_leap_years_only() -> None:
    cron = crontab(minute=0, hour=12, day_of_month=29, month_of_year="feb")
    assert runs(cron, at("2025-01-01T00:00"), UTC, 3) == [
        "2028-02-29T12:00", "2032-02-29T12:00", "2036-02-29T12:00",
    ]  # fmt: skip
    # 2100 is not a leap year (divisible by 100, not by 400); 2400 is.
    assert runs(cron, at("2096-03-01T00:00"), UTC, 1) == ["2104-02-29T12:00"]


def test_the_last_days_of_february_in_leap_and_common_years() -> None:
    cron = crontab(minute=0, hour=0, day_of_month="28-31", month_of_year=2)
    assert runs(cron, at("2027-01-01T00:00"), UTC, 3) == [
        "2027-02-28T00:00", "2028-02-28T00:00", "2028-02-29T00:00",
    ]  # fmt: skip


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    # Fridays the 13th in 2026: February, March and November; then August 2027.
    cron = crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri")
    assert runs(cron, at("2026-01-01T00:00"), UTC, 4) == [
        "2026-02-13T00:00", "2026-03-13T00:00", "2026-11-13T00:00", "2027-08-13T00:00",
    ]  # fmt: skip


def test_a_rare_date_decades_away_is_found() -> None:
    # February 29th on a Monday: 2016, then 2044, then 2072.
    cron = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon")
    assert runs(cron, at("2016-03-01T00:00"), UTC, 2) == ["2044-02-29T00:00", "2072-02-29T00:00"]


@pytest.mark.parametrize(
    "cron",
    [
        crontab(day_of_month=31, month_of_year=2),
        crontab(day_of_month="30,31", month_of_year="feb"),
        crontab(day_of_month=31, month_of_year="apr,jun,sep,nov"),
    ],
    ids=repr,
)
def test_a_crontab_that_can_never_match_never_runs(cron: crontab) -> None:
    assert not cron.can_match
    assert cron.next_run(at("2026-01-01T00:00"), UTC) is None
    assert cron.next_run(at("2026-01-01T00:00"), NEW_YORK) is None


def test_the_search_ends_near_the_end_of_the_calendar() -> None:
    cron = crontab(minute=0, hour=0, day_of_month=1, month_of_year=1)
    assert cron.next_run(at("9998-06-01T00:00"), UTC) is None


def test_fields_are_read_on_the_zones_wall_clock() -> None:
    # 09:00 in New York is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT).
    cron = crontab(minute=0, hour=9)
    assert runs(cron, at("2026-01-05T00:00"), NEW_YORK, 1) == ["2026-01-05T14:00"]
    assert runs(cron, at("2026-07-06T00:00"), NEW_YORK, 1) == ["2026-07-06T13:00"]


def test_the_day_is_the_zones_day_not_utcs() -> None:
    # Monday 09:00 in Tokyo is Monday 00:00 UTC; at Sunday 23:30 UTC it is Monday 08:30 there.
    tokyo = ZoneInfo("Asia/Tokyo")
    cron = crontab(minute=0, hour=9, day_of_week="mon")
    assert runs(cron, at("2026-05-10T23:30"), tokyo, 1) == ["2026-05-11T00:00"]


def test_after_may_be_given_in_any_zone() -> None:
    after = datetime(2026, 5, 5, 11, 15, tzinfo=NEW_YORK)  # 15:15 UTC
    assert crontab(minute=0).next_run(after, UTC) == at("2026-05-05T16:00")


@pytest.mark.parametrize(
    ("cron", "after"),
    [
        (crontab(minute=0, hour=0, day_of_month=1, month_of_year=1), "2026-01-01T00:00"),
        (
            crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week=1),
            "2016-03-01T00:00",
        ),
        (crontab(), "2026-05-05T23:59:30"),
        (crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"), "2026-05-08T17:00"),
    ],
    ids=["yearly", "every 28 years", "every minute at 23:59", "weekdays"],
)
def test_next_run_reads_the_zone_a_few_dozen_times_not_once_a_minute(
    cron: crontab, after: str
) -> None:
    zone = CountedZone(NEW_YORK)
    assert cron.next_run(at(after), zone) == cron.next_run(at(after), NEW_YORK)
    assert 0 < zone.readings < 100


class CountedZone(tzinfo):
    """A zone that counts how often it is read."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self.readings = 0

    def utcoffset(self, moment: datetime | None) -> timedelta | None:
        self.readings += 1
        return self.zone.utcoffset(moment and moment.replace(tzinfo=self.zone))

    def dst(self, moment: datetime | None) -> timedelta | None:
        return self.zone.dst(moment and moment.replace(tzinfo=self.zone))

    def tzname(self, moment: datetime | None) -> str | None:
        return self.zone.tzname(moment and moment.replace(tzinfo=self.zone))

    def fromutc(self, moment: datetime) -> datetime:
        self.readings += 1
        return self.zone.fromutc(moment.replace(tzinfo=self.zone)).replace(tzinfo=self)


# -- New York ------------------------------------------------------------------------------


def test_new_york_spring_forward_a_daily_job_runs_when_the_clock_jumps() -> None:
    cron = crontab(minute=30, hour=2)
    assert runs(cron, at("2026-03-07T00:00"), NEW_YORK, 3) == [
        "2026-03-07T07:30",  # 02:30 EST
        "2026-03-08T07:00",  # 02:30 does not exist: 03:00 EDT, the jump
        "2026-03-09T06:30",  # 02:30 EDT
    ]


def test_new_york_spring_forward_missing_times_make_one_run() -> None:
    cron = crontab(minute="*/15", hour=2)
    assert runs(cron, at("2026-03-08T05:00"), NEW_YORK, 2) == [
        "2026-03-08T07:00",  # 02:00, 02:15, 02:30 and 02:45: all at the jump, once
        "2026-03-09T06:00",
    ]
    # A missing time and an existing one at the same instant: one run too.
    both = crontab(minute=0, hour="2,3")
    assert runs(both, at("2026-03-08T05:00"), NEW_YORK, 2) == [
        "2026-03-08T07:00",  # 02:00 (missing) and 03:00 EDT
        "2026-03-09T06:00",
    ]


def test_new_york_spring_forward_an_hourly_job_skips_the_missing_hour() -> None:
    cron = crontab(minute=30)
    assert runs(cron, at("2026-03-08T05:00"), NEW_YORK, 3) == [
        "2026-03-08T05:30",  # 00:30 EST
        "2026-03-08T06:30",  # 01:30 EST
        "2026-03-08T07:30",  # 03:30 EDT; 02:30 does not exist
    ]


def test_new_york_fall_back_a_daily_job_runs_at_the_first_occurrence() -> None:
    cron = crontab(minute=30, hour=1)
    assert runs(cron, at("2026-10-31T00:00"), NEW_YORK, 3) == [
        "2026-10-31T05:30",  # 01:30 EDT
        "2026-11-01T05:30",  # 01:30 EDT, the first of two
        "2026-11-02T06:30",  # 01:30 EST
    ]


def test_new_york_fall_back_an_hourly_job_runs_at_both_occurrences() -> None:
    cron = crontab(minute=30)
    assert runs(cron, at("2026-11-01T04:00"), NEW_YORK, 4) == [
        "2026-11-01T04:30",  # 00:30 EDT
        "2026-11-01T05:30",  # 01:30 EDT
        "2026-11-01T06:30",  # 01:30 EST
        "2026-11-01T07:30",  # 02:30 EST
    ]


def test_new_york_fall_back_the_second_occurrence_is_found_from_inside_the_repeat() -> None:
    # From 01:50 EDT (05:50 UTC) the next quarter hour is 01:00 EST (06:00 UTC).
    cron = crontab(minute="*/15")
    assert runs(cron, at("2026-11-01T05:50"), NEW_YORK, 2) == [
        "2026-11-01T06:00",
        "2026-11-01T06:15",
    ]
    # A fixed-hour job never runs in the second pass: from inside it, tomorrow.
    fixed = crontab(minute="*/15", hour=1)
    assert runs(fixed, at("2026-11-01T05:50"), NEW_YORK, 1) == ["2026-11-02T06:00"]


def test_new_york_fall_back_a_later_first_occurrence_beats_an_earlier_second() -> None:
    # At 01:10 EDT (05:10 UTC), 01:00's second showing (06:00 UTC) is later than 01:15 EDT.
    cron = crontab(minute="0,15")
    assert runs(cron, at("2026-11-01T05:10"), NEW_YORK, 4) == [
        "2026-11-01T05:15",  # 01:15 EDT
        "2026-11-01T06:00",  # 01:00 EST
        "2026-11-01T06:15",  # 01:15 EST
        "2026-11-01T07:00",  # 02:00 EST
    ]


# -- Santiago: the clock changes at midnight -----------------------------------------------


def test_santiago_a_midnight_job_runs_when_midnight_is_skipped() -> None:
    # 6 September 2026: 23:59 -04 on the 5th is followed by 01:00 -03 on the 6th (04:00 UTC).
    cron = crontab(minute=0, hour=0)
    assert runs(cron, at("2026-09-05T00:00"), SANTIAGO, 3) == [
        "2026-09-05T04:00",  # 00:00 -04
        "2026-09-06T04:00",  # 00:00 does not exist: 01:00 -03, the jump
        "2026-09-07T03:00",  # 00:00 -03
    ]


def test_santiago_the_evening_repeats_into_the_previous_day() -> None:
    # 5 April 2026: 23:59 -03 on the 4th is followed by 23:00 -04 on the 4th (03:00 UTC).
    hourly = crontab(minute=30)
    assert runs(hourly, at("2026-04-05T02:00"), SANTIAGO, 3) == [
        "2026-04-05T02:30",  # 23:30 -03
        "2026-04-05T03:30",  # 23:30 -04
        "2026-04-05T04:30",  # 00:30 -04 on the 5th
    ]
    daily = crontab(minute=30, hour=23)
    assert runs(daily, at("2026-04-05T02:00"), SANTIAGO, 2) == [
        "2026-04-05T02:30",  # 23:30 -03, the first of two
        "2026-04-06T03:30",  # 23:30 -04 on the 5th
    ]


# -- London --------------------------------------------------------------------------------


def test_london_spring_forward_a_daily_job_runs_when_the_clock_jumps() -> None:
    cron = crontab(minute=30, hour=1)
    assert runs(cron, at("2026-03-28T00:00"), LONDON, 3) == [
        "2026-03-28T01:30",  # 01:30 GMT
        "2026-03-29T01:00",  # 01:30 does not exist: 02:00 BST, the jump
        "2026-03-30T00:30",  # 01:30 BST
    ]


def test_london_spring_forward_an_hourly_job_skips_the_missing_hour() -> None:
    cron = crontab(minute=30)
    assert runs(cron, at("2026-03-28T23:45"), LONDON, 3) == [
        "2026-03-29T00:30",  # 00:30 GMT
        "2026-03-29T01:30",  # 02:30 BST; 01:30 does not exist
        "2026-03-29T02:30",  # 03:30 BST
    ]


def test_london_fall_back_a_daily_job_runs_at_the_first_occurrence() -> None:
    cron = crontab(minute=0, hour=1)
    assert runs(cron, at("2026-10-24T12:00"), LONDON, 2) == [
        "2026-10-25T00:00",  # 01:00 BST, the first of two
        "2026-10-26T01:00",  # 01:00 GMT
    ]


def test_london_fall_back_an_hourly_job_runs_at_both_occurrences() -> None:
    cron = crontab(minute=30)
    assert runs(cron, at("2026-10-24T23:00"), LONDON, 4) == [
        "2026-10-24T23:30",  # 00:30 BST
        "2026-10-25T00:30",  # 01:30 BST
        "2026-10-25T01:30",  # 01:30 GMT
        "2026-10-25T02:30",  # 02:30 GMT
    ]


# -- against a plain scan of every minute --------------------------------------------------


def scanned(cron: crontab, after: datetime, zone: tzinfo, horizon: timedelta) -> datetime | None:
    """The next run found the slow way: each UTC minute after ``after``, read on the wall.

    A minute runs if its wall time matches and, for a fixed-hour crontab, is the first
    showing of that time; or if it is the instant the clock jumps over missing times of
    which one matches (fixed hours only). This states the rules from the side of real time,
    where ``next_run`` works from the wall clock's side.
    """
    moment = after.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    while moment - after <= horizon:
        wall = moment.astimezone(zone)
        if matches(cron, wall.replace(tzinfo=None)) and (cron.every_hour or wall.fold == 0):
            return moment
        before = (moment - timedelta(minutes=1)).astimezone(zone)
        jumped = wall.replace(tzinfo=None) - before.replace(tzinfo=None) - timedelta(minutes=1)
        if not cron.every_hour and jumped > timedelta(0):
            skipped = before.replace(tzinfo=None) + timedelta(minutes=1)
            while skipped < wall.replace(tzinfo=None):
                if matches(cron, skipped):
                    return moment
                skipped += timedelta(minutes=1)
        moment += timedelta(minutes=1)
    return None


def matches(cron: crontab, wall: datetime) -> bool:
    return (
        wall.minute in cron.minute
        and wall.hour in cron.hour
        and wall.day in cron.day_of_month
        and wall.month in cron.month_of_year
        and wall.isoweekday() % 7 in cron.day_of_week
    )


TRANSITIONS = [
    (NEW_YORK, at("2026-03-08T07:00")),
    (NEW_YORK, at("2026-11-01T06:00")),
    (LONDON, at("2026-03-29T01:00")),
    (LONDON, at("2026-10-25T01:00")),
    # Lord Howe Island moves its clock by half an hour.
    (ZoneInfo("Australia/Lord_Howe"), at("2026-04-04T15:00")),
    (ZoneInfo("Australia/Lord_Howe"), at("2026-10-03T15:30")),
    (SANTIAGO, at("2026-04-05T03:00")),
    (SANTIAGO, at("2026-09-06T04:00")),
]


@settings(max_examples=400, deadline=None)
@given(
    transition=st.sampled_from(TRANSITIONS),
    offset_minutes=st.integers(min_value=-26 * 60, max_value=4 * 60),
    offset_seconds=st.sampled_from([0, 1, 59]),
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=4),
    hours=st.one_of(st.just(set(range(24))), st.sets(st.integers(0, 23), min_size=1, max_size=3)),
)
def test_next_run_agrees_with_a_scan_of_every_minute_around_dst(
    transition: tuple[ZoneInfo, datetime],
    offset_minutes: int,
    offset_seconds: int,
    minutes: set[int],
    hours: set[int],
) -> None:
    zone, change = transition
    after = change + timedelta(minutes=offset_minutes, seconds=offset_seconds)
    cron = crontab(minute=minutes, hour=hours)
    expected = scanned(cron, after, zone, horizon=timedelta(days=2))
    assert expected is not None  # every day has a matching time within two days
    assert cron.next_run(after, zone) == expected


def calendar_scan(cron: crontab, after: datetime, years: int) -> datetime | None:
    """The next run in UTC found the slow way: every day, then every hour and minute of it."""
    day = after.date()
    while day.year < after.year + years:
        if (
            day.month in cron.month_of_year
            and day.day in cron.day_of_month
            and day.isoweekday() % 7 in cron.day_of_week
        ):
            for hour in sorted(cron.hour):
                for minute in sorted(cron.minute):
                    run = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                    if run > after:
                        return run
        day += timedelta(days=1)
    return None


@settings(max_examples=300, deadline=None)
@given(
    after=st.datetimes(datetime(2000, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)),
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=3),
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=3),
    days_of_week=st.sets(st.integers(0, 7), min_size=1, max_size=3),
    days_of_month=st.one_of(
        st.just(set(range(1, 32))), st.sets(st.integers(1, 31), min_size=1, max_size=3)
    ),
    months=st.one_of(
        st.just(set(range(1, 13))), st.sets(st.integers(1, 12), min_size=1, max_size=3)
    ),
)
def test_next_run_agrees_with_a_scan_of_every_day(
    after: datetime,
    minutes: set[int],
    hours: set[int],
    days_of_week: set[int],
    days_of_month: set[int],
    months: set[int],
) -> None:
    cron = crontab(minutes, hours, days_of_week, days_of_month, months)
    expected = calendar_scan(cron, after, years=50)
    found = cron.next_run(after, UTC)
    if expected is None:  # a rare date (29 February on a Monday) or none at all
        assert found is None or found.year >= after.year + 50
    else:
        assert found == expected
