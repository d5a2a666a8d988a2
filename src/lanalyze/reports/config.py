"""``[[reports]]``: scheduled reports, one table each."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from lanalyze.configbase import Section
from lanalyze.mail.config import MailAddress
from lanalyze.reports.schedule import Cron, Period

ReportKind = Literal["top", "series", "interfaces", "mail", "alarms"]
KINDS: tuple[str, ...] = ("top", "series", "interfaces", "mail", "alarms")


class ReportConfig(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The report's name (`lanalyze reports run NAME`): letters, digits, `_.-`.",
    )
    kind: ReportKind = Field(
        description="`top` (top N of `by`), `series` (bits/s over the period, split by the "
        "top `limit` values of `by` when set), `interfaces` (top interfaces), `mail` "
        "(accepted, rejected and forged messages per UTC hour or day, rejections per reason), "
        "`alarms` (the alarms seen in the period, oldest first, at most `limit`).",
    )
    by: str | None = Field(
        default=None,
        description="Dimension(s) as in `lanalyze flows top --by` (required for `top`; the "
        "split of `series`).",
    )
    limit: int = Field(
        default=10, ge=1, le=1000, description="Rows of a top report (series: groups, at most 50)."
    )
    order: Literal["bytes", "packets", "flows"] = Field(
        default="bytes", description="What ranks the rows."
    )
    filter: str | None = Field(
        default=None, description="nfdump-style flow filter (as `lanalyze flows top --filter`)."
    )
    period: Period = Field(
        default="yesterday",
        description="The time range reported, before the run, in `time_zone`: `yesterday`, "
        "`last_week` (Monday to Monday), `last_month`, or `today` (midnight until the run).",
    )
    schedule: str = Field(
        default="0 7 * * *",
        description="When to send it: the five cron fields (minute hour day month weekday, "
        "`*`, lists, ranges, steps, names) in `time_zone`.",
    )
    time_zone: str = Field(
        default="UTC",
        description="IANA time zone (`Europe/Berlin`) of `schedule` and `period`.",
    )
    recipients: list[MailAddress] = Field(
        min_length=1, max_length=100, description="Addresses the report is mailed to."
    )
    subject: str | None = Field(
        default=None,
        max_length=200,
        description="Subject line (default: `lanalyze report NAME: PERIOD`).",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        Cron.parse(value)
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _needs_by(self) -> ReportConfig:
        if self.kind == "top" and not self.by:
            raise ValueError("a `top` report needs `by`")
        if self.kind == "series" and self.limit > 50:
            raise ValueError("a `series` report splits into at most 50 groups (`limit`)")
        return self

    @property
    def cron(self) -> Cron:
        return Cron.parse(self.schedule)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


def unique_names(reports: list[ReportConfig]) -> list[ReportConfig]:
    names = [report.name for report in reports]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"report names must be unique: {', '.join(duplicates)}")
    return reports
