"""Cron fields, time zones and DST, report periods, and the [[reports]] settings."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from lanalyze.config import parse_config
from lanalyze.errors import ConfigError
from lanalyze.reports.schedule import Cron, period

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_fields() -> None:
    cron = Cron.parse("*/15 8-10,22 1,15 jan-mar MON-fri")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {8, 9, 10, 22}
    assert cron.days == {1, 15}
    assert cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert Cron.parse("5/20 * * * *").minutes == {5, 25, 45}


@pytest.mark.parametrize(
    "text",
    [
        "* * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "*/0 * * * *",
        "5-1 * * * *",
        "x * * * *",
        "* * * * 8",
    ],
)
def test_bad_fields(text: str) -> None:
    with pytest.raises(ValueError):
        Cron.parse(text)


def test_next_in_a_zone() -> None:
    cron = Cron.parse("0 7 * * *")
    # 07:00 in Berlin is 06:00 UTC in winter.
    assert cron.next_after(utc("2026-01-10T05:00:00"), BERLIN) == utc("2026-01-10T06:00:00")
    assert cron.next_after(utc("2026-01-10T06:00:00"), BERLIN) == utc("2026-01-11T06:00:00")
    # and 05:00 UTC in summer
    assert cron.next_after(utc("2026-07-10T06:00:00"), BERLIN) == utc("2026-07-11T05:00:00")


def test_weekday_and_day_either() -> None:
    # Vixie cron: day 1 of the month OR a Monday.
    cron = Cron.parse("0 0 1 * mon")
    runs = []
    moment = utc("2026-03-01T00:00:00")
    for _ in range(4):
        moment = cron.next_after(moment, ZoneInfo("UTC"))
        runs.append(moment.date().isoformat())
    assert runs == ["2026-03-02", "2026-03-09", "2026-03-16", "2026-03-23"]
    assert cron.next_after(utc("2026-03-30T00:00:00"), ZoneInfo("UTC")) == utc(
        "2026-04-01T00:00:00"
    )


def test_dst_spring_forward_gap_runs_after_the_gap() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST in Berlin: 02:30 does not exist that day.
    cron = Cron.parse("30 2 * * *")
    run = cron.next_after(utc("2026-03-28T12:00:00"), BERLIN)
    assert run == utc("2026-03-29T01:30:00")  # 03:30 CEST, half an hour after the gap's start
    assert run.astimezone(BERLIN).hour == 3
    following = cron.next_after(run, BERLIN)
    assert following == utc("2026-03-30T00:30:00")  # 02:30 CEST the next day


def test_dst_fall_back_runs_once() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST in New York: 01:30 happens twice.
    cron = Cron.parse("30 1 * * *")
    first = cron.next_after(utc("2026-10-31T12:00:00"), NEW_YORK)
    assert first == utc("2026-11-01T05:30:00")  # 01:30 EDT, the first occurrence
    assert cron.next_after(first, NEW_YORK) == utc("2026-11-02T06:30:00")  # not 06:30 same day
    hourly = Cron.parse("0 * * * *")
    hours = []
    moment = utc("2026-11-01T04:30:00")  # 00:30 EDT
    for _ in range(3):
        moment = hourly.next_after(moment, NEW_YORK)
        hours.append(moment)
    # 01:00 EDT, then 02:00 EST (the second 01:00 is the same wall time: run once)
    assert hours == [
        utc("2026-11-01T05:00:00"),
        utc("2026-11-01T07:00:00"),
        utc("2026-11-01T08:00:00"),
    ]


def test_never_runs() -> None:
    with pytest.raises(ValueError, match="never runs"):
        Cron.parse("0 0 31 2 *").next_after(utc("2026-01-01T00:00:00"), BERLIN)


def test_latest_until() -> None:
    cron = Cron.parse("0 7 * * *")
    last = utc("2026-01-01T06:00:00")
    assert cron.latest_until(last, utc("2026-01-04T12:00:00"), BERLIN) == utc("2026-01-04T06:00:00")
    assert cron.latest_until(last, utc("2026-01-02T05:59:00"), BERLIN) is None


def test_periods() -> None:
    at = utc("2026-03-30T06:00:00")  # Monday 08:00 CEST
    assert period("yesterday", at, BERLIN) == (
        utc("2026-03-28T23:00:00"),  # Sunday 00:00 CET ...
        utc("2026-03-29T22:00:00"),  # ... to Monday 00:00 CEST: a 23-hour day
    )
    since, until = period("last_week", at, BERLIN)
    assert since.astimezone(BERLIN).isoformat() == "2026-03-23T00:00:00+01:00"
    assert until.astimezone(BERLIN).isoformat() == "2026-03-30T00:00:00+02:00"
    since, until = period("last_month", utc("2026-01-15T00:00:00"), ZoneInfo("UTC"))
    assert (since, until) == (utc("2025-12-01T00:00:00"), utc("2026-01-01T00:00:00"))
    assert period("today", at, BERLIN) == (utc("2026-03-29T22:00:00"), at)


REPORT = """
[[reports]]
name = "daily"
kind = "top"
by = "srcip"
recipients = ["ops@example.test"]
"""


def test_config() -> None:
    config = parse_config(REPORT + 'schedule = "0 7 * * mon-fri"\ntime_zone = "Europe/Berlin"\n')
    (report,) = config.reports
    assert report.cron.weekdays == {1, 2, 3, 4, 5}
    assert report.zone == BERLIN


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('schedule = "0 7 * *"\n', "reports.0.schedule"),
        ('time_zone = "Mars/Olympus"\n', "unknown time zone"),
        ('period = "fortnight"\n', "reports.0.period"),
        (REPORT, "unique"),
    ],
)
def test_config_errors(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(REPORT + extra)


def test_top_needs_by() -> None:
    with pytest.raises(ConfigError, match="needs `by`"):
        parse_config('[[reports]]\nname = "x"\nkind = "top"\nrecipients = ["a@b.test"]\n')


def test_serve_runs_the_scheduler_after_the_mail_server() -> None:
    from lanalyze.mail.server import MailServer
    from lanalyze.reports.scheduler import ReportScheduler
    from lanalyze.serve import build_components

    config = parse_config(REPORT + "[flows]\nenabled = false\n[web]\nenabled = false\n")
    components = build_components(config)
    kinds = [type(c) for c in components]
    assert kinds.index(MailServer) < kinds.index(ReportScheduler)
    mail = components[kinds.index(MailServer)]
    scheduler = components[kinds.index(ReportScheduler)]
    assert isinstance(mail, MailServer) and isinstance(scheduler, ReportScheduler)
    assert scheduler.mailer.server_pickup is not None
    assert scheduler.mailer.server_pickup() is mail.pickup  # None until the server starts
    assert not any(isinstance(c, ReportScheduler) for c in build_components(parse_config("")))
