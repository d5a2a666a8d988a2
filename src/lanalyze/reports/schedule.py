"""Cron-like schedules in a time zone, and the report periods they name (pure functions).

A schedule is the five fields of crontab(5): minute (0-59), hour (0-23), day of month
(1-31), month (1-12 or jan-dec), day of week (0-7 or sun-sat, 0 and 7 both Sunday), each
``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma-separated list of
those. As in Vixie cron, when both day fields are restricted a day matching either runs.

Times are wall-clock times in the schedule's zone (``zoneinfo``), with two rules for the
days daylight saving time changes the clock:

- a wall time that does not exist (spring forward, e.g. 02:30 in Europe/Berlin on the last
  Sunday of March) runs at the same distance after the gap's start, on the new clock (03:30);
- a wall time that occurs twice (fall back) runs once, at its first occurrence.

Trust: the expressions come from the operator's configuration; every field is checked and a
bad one raises :class:`ValueError` naming it (the configuration reports it with its key).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
SEARCH_DAYS = 366 * 8
"""How far ahead a next run is looked for: ``0 0 29 2 1`` (29 February that is a Monday, or
any Monday with Vixie's either-day rule) always has one within a year, but ``0 0 31 2 *``
never has; past this it is an error, not an endless loop."""

Period = Literal["yesterday", "last_week", "last_month", "today"]
PERIODS: tuple[Period, ...] = ("yesterday", "last_week", "last_month", "today")


def _value(text: str, name: str, names: dict[str, int]) -> int:
    text = text.strip().lower()
    if text in names:
        return names[text]
    if not text.isdigit():
        raise ValueError(f"{name}: {text!r} is not a number")
    return int(text)


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name}: bad step in {part!r}")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _value(a, name, names), _value(b, name, names)
        else:
            first = _value(base, name, names)
            last = high if slash else first
        if not low <= first <= last <= high:
            raise ValueError(f"{name}: {part!r} is outside {low}-{high} (or reversed)")
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """One parsed schedule: the sets of minutes, hours, days, months and weekdays it runs."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday .. 6 = Saturday (7 folded into 0)."""
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(
                f"a schedule has 5 fields (minute hour day month weekday), got {len(parts)}"
            )
        sets = [
            _field(part, name, low, high, names)
            for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
        ]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(
            text,
            sets[0],
            sets[1],
            sets[2],
            sets[3],
            weekdays,
            any_day=parts[2].startswith("*"),
            any_weekday=parts[4].startswith("*"),
        )

    def runs_on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week  # Vixie cron: either restricted day field

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        """The first run strictly after ``after`` (aware), as an aware UTC datetime."""
        local = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        start = local + timedelta(minutes=1)
        day = start.date()
        for _ in range(SEARCH_DAYS):
            if self.runs_on(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        wall = datetime.combine(day, time(hour, minute))
                        if wall < start:
                            continue
                        # fold=0: a repeated wall time is its first occurrence, a missing
                        # one maps past the gap (see the module docstring).
                        moment = wall.replace(tzinfo=zone).astimezone(UTC)
                        if moment > after:
                            return moment
            day += timedelta(days=1)
        raise ValueError(f"schedule {self.text!r} never runs")

    def latest_until(self, after: datetime, until: datetime, zone: ZoneInfo) -> datetime | None:
        """The last run in ``(after, until]``, or None (at most 100 000 runs are walked)."""
        found = None
        moment = after
        for _ in range(100_000):
            moment = self.next_after(moment, zone)
            if moment > until:
                return found
            found = moment
        return found


def period(name: Period, at: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The ``[start, end)`` of a named period before ``at``, in ``zone``'s calendar, as aware
    UTC datetimes: ``yesterday`` (the day before), ``last_week`` (Monday to Monday, ISO
    weeks), ``last_month``, ``today`` (midnight until ``at``). A day with a DST change is 23
    or 25 hours long."""
    today = at.astimezone(zone).date()
    if name == "today":
        first, end_day = today, None
    elif name == "yesterday":
        first, end_day = today - timedelta(days=1), today
    elif name == "last_week":
        monday = today - timedelta(days=today.weekday())
        first, end_day = monday - timedelta(days=7), monday
    elif name == "last_month":
        end_day = today.replace(day=1)
        first = (end_day - timedelta(days=1)).replace(day=1)
    else:
        raise ValueError(f"unknown period {name!r}")

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time()).replace(tzinfo=zone).astimezone(UTC)

    end = at.astimezone(UTC) if end_day is None else midnight(end_day)
    return midnight(first), end
