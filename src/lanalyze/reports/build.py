"""A scheduled report's data: tables (with the CSV the CLI prints) and the charts to draw.

Flow reports come from the query layer (:mod:`lanalyze.flows.query.reports`), the same
functions and the same CSV columns as ``lanalyze flows top|series|interfaces --format csv``
(:mod:`lanalyze.flows.query.render`), so an attachment equals the command's output for the
same window and filter. The mail summary comes from the message index's read API
(:meth:`lanalyze.mail.index.MessageIndex.counts`, ``rejection_summary``).

Blocking (DuckDB, SQLite): the scheduler calls :func:`build` in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lanalyze.reports.schedule import period

if TYPE_CHECKING:
    from lanalyze.config import Config
    from lanalyze.reports.config import ReportConfig


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    csv: str
    filename: str
    formats: dict[str, str] = field(default_factory=dict)
    """Column -> ``bytes``, ``bps``, ``count``, ``percent``: how the HTML shows it."""


@dataclass
class Chart:
    kind: str
    """``bar`` (``series[s][category]``) or ``line`` (``series[s][point]``)."""
    title: str
    series: list[list[float]]
    legend: list[str]


@dataclass
class ReportData:
    name: str
    kind: str
    title: str
    since: datetime
    until: datetime
    time_zone: str
    filter: str | None
    tables: list[Table]
    charts: list[Chart]
    note: str = ""


def build(report: ReportConfig, config: Config, at: datetime) -> ReportData:
    """The data of ``report`` for its period before ``at`` (aware). Raises the query layer's
    ReportInputError (bad filter, dimension) or OSError/sqlite3.Error (store unreadable)."""
    since, until = period(report.period, at, report.zone)
    title = report.subject or f"lanalyze report {report.name}: {_period_text(report, since)}"
    data = ReportData(
        report.name, report.kind, title, since, until, report.time_zone, report.filter, [], []
    )
    start_ms, end_ms = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    if report.kind == "mail":
        _mail(data, config, since.timestamp(), until.timestamp())
        return data
    if report.kind == "alarms":
        _alarms(data, config, since.timestamp(), until.timestamp(), report.limit)
        return data
    from lanalyze.flows.query import render, reports
    from lanalyze.flows.store.paths import flow_dir

    reports.apply_config(config.flows.query)
    flows = flow_dir(config.general.data_path)
    if not flows.is_dir():
        data.note = f"no flow data: {flows} does not exist"
        return data
    if report.kind == "top":
        assert report.by is not None
        top = reports.top(
            flows,
            report.by,
            since=start_ms,
            until=end_ms,
            order=report.order,
            limit=report.limit,
            filter=report.filter,
        )
        rows = [row.to_json() for row in top.rows]
        columns = [*top.dimensions, *render.TOP_COLUMNS]
        data.tables.append(
            Table(
                f"Top {report.limit} by {report.by} ({report.order})",
                columns,
                rows,
                render.to_csv(rows, columns),
                f"{report.name}-top.csv",
                {
                    "bytes": "bytes",
                    "packets": "count",
                    "flows": "count",
                    "bps": "bps",
                    "pps": "count",
                    "share": "percent",
                },
            )
        )
        data.charts.append(
            Chart(
                "bar",
                f"{report.order} per {report.by}",
                [[float(row[report.order]) for row in rows]],
                [report.order],
            )
        )
    elif report.kind == "series":
        result = reports.series(
            flows,
            since=start_ms,
            until=end_ms,
            by=report.by,
            top_n=report.limit if report.by else 5,
            order=report.order,
            filter=report.filter,
        )
        points = [point.to_json() for point in result.points]
        columns = list(render.SERIES_COLUMNS)
        data.tables.append(
            Table(
                "Traffic over time" + (f" by {report.by}" if report.by else ""),
                columns,
                points,
                render.to_csv(points, columns),
                f"{report.name}-series.csv",
                {
                    "bps": "bps",
                    "pps": "count",
                    "fps": "count",
                    "bytes": "bytes",
                    "packets": "count",
                    "flows": "count",
                },
            )
        )
        # Every bucket of the window, so a quiet hour is a gap on the time axis, not skipped.
        buckets = list(range(result.since, result.until, result.bucket_ms))
        slot = {time: i for i, time in enumerate(buckets)}
        lines = {group: [0.0] * len(buckets) for group in result.groups}
        for point in result.points:
            if point.time in slot:
                line = lines.setdefault(point.group, [0.0] * len(buckets))
                line[slot[point.time]] = point.bps
        data.charts.append(Chart("line", "bits/s", list(lines.values()), list(lines)))
        data.note = f"{len(buckets)} buckets of {result.bucket_ms // 1000} s"
    elif report.kind == "interfaces":
        rows = [
            row.to_json()
            for row in reports.top_interfaces(
                flows,
                since=start_ms,
                until=end_ms,
                order=report.order,
                limit=report.limit,
                filter=report.filter,
            )
        ]
        columns = list(render.INTERFACE_COLUMNS)
        data.tables.append(
            Table(
                f"Top {report.limit} interfaces ({report.order})",
                columns,
                rows,
                render.to_csv(rows, columns),
                f"{report.name}-interfaces.csv",
                {
                    "in_bps": "bps",
                    "out_bps": "bps",
                    "in_bytes": "bytes",
                    "out_bytes": "bytes",
                    "in_util_pct": "percent",
                    "out_util_pct": "percent",
                },
            )
        )
        data.charts.append(
            Chart(
                "bar",
                "in and out bits/s per interface",
                [[float(r["in_bps"]) for r in rows], [float(r["out_bps"]) for r in rows]],
                ["in", "out"],
            )
        )
    return data


MAIL_COLUMNS = ["time", "accepted", "rejected", "forged"]
ALARM_COLUMNS = [
    "id",
    "opened",
    "last_seen",
    "closed",
    "severity",
    "algorithm",
    "subject",
    "peak",
    "threshold",
    "unit",
    "findings",
    "state",
    "ack_by",
]
ALARM_SCAN = 10_000
"""Alarms read from the store at most for one report (newest first; the store's search has
no upper time bound, so the ones opened after the period are read and skipped)."""


def _alarms(data: ReportData, config: Config, since: float, until: float, limit: int) -> None:
    """Alarms seen in the period (opened before its end, last seen after its start)."""
    from lanalyze.alarms.store import AlarmQuery, AlarmStore
    from lanalyze.flows.query import render

    store = AlarmStore.open_readonly(config.general.data_path)
    if store is None:
        data.note = "no alarm store: detection has not run on this data directory"
        found: list[dict[str, Any]] = []
    else:
        with store:
            found = store.search(AlarmQuery(since=since, limit=ALARM_SCAN)).rows
    alarms = [a for a in found if float(a["opened_at"]) < until]
    alarms.sort(key=lambda a: (float(a["opened_at"]), int(a["id"])))

    def stamp(value: Any) -> str | None:
        if value is None:
            return None
        moment = datetime.fromtimestamp(float(value), UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    rows = [
        {
            **{
                k: a.get(k)
                for k in (
                    "id",
                    "severity",
                    "algorithm",
                    "subject",
                    "peak",
                    "threshold",
                    "unit",
                    "findings",
                    "state",
                    "ack_by",
                )
            },
            "opened": stamp(a["opened_at"]),
            "last_seen": stamp(a["last_seen"]),
            "closed": stamp(a.get("closed_at")),
        }
        for a in alarms[:limit]
    ]
    per_algorithm: dict[str, int] = {}
    for a in alarms:
        per_algorithm[str(a["algorithm"])] = per_algorithm.get(str(a["algorithm"]), 0) + 1
    if store is not None:
        shown = f"; the first {limit} listed" if len(alarms) > limit else ""
        data.note = f"{len(alarms)} alarms{shown}: " + ", ".join(
            f"{n} {name}" for name, n in sorted(per_algorithm.items())
        )
    data.tables.append(
        Table(
            "Alarms",
            ALARM_COLUMNS,
            rows,
            render.to_csv(rows, ALARM_COLUMNS),
            f"{data.name}-alarms.csv",
            {"findings": "count"},
        )
    )
    data.charts.append(
        Chart(
            "bar",
            "alarms per algorithm: " + ", ".join(sorted(per_algorithm)),
            [[float(per_algorithm[name]) for name in sorted(per_algorithm)]],
            ["alarms"],
        )
    )


def _mail(data: ReportData, config: Config, since: float, until: float) -> None:
    from lanalyze.flows.query import render
    from lanalyze.mail.index import MessageIndex
    from lanalyze.mail.queuefile import Layout

    index = MessageIndex.open_readonly(Layout(config.general.data_path).index)
    if index is None:
        data.note = "no message index: the mail server has not run on this data directory"
        return
    bucket = 3600 if until - since <= 2 * 86400 else 86400
    with index:
        counts = index.counts(since, until, bucket)
        summary = index.rejection_summary(since, until, limit=10)
    start = since - since % bucket
    rows: list[dict[str, Any]] = []
    for i in range(len(counts["accepted"])):
        stamp = datetime.fromtimestamp(start + i * bucket, UTC)  # UTC, as the flow CSVs
        rows.append(
            {
                "time": stamp.isoformat().replace("+00:00", "Z"),
                **{name: counts[name][i] for name in MAIL_COLUMNS[1:]},
            }
        )
    totals = {name: sum(counts[name]) for name in MAIL_COLUMNS[1:]}
    data.note = ", ".join(f"{value} {name}" for name, value in totals.items())
    data.tables.append(
        Table(
            "Messages per " + ("hour" if bucket == 3600 else "day"),
            MAIL_COLUMNS,
            rows,
            render.to_csv(rows, MAIL_COLUMNS),
            f"{data.name}-mail.csv",
            {"accepted": "count", "rejected": "count", "forged": "count"},
        )
    )
    data.charts.append(
        Chart(
            "bar",
            "accepted, rejected and forged",
            [[float(v) for v in counts[name]] for name in MAIL_COLUMNS[1:]],
            MAIL_COLUMNS[1:],
        )
    )
    reasons = summary["reasons"]
    data.tables.append(
        Table(
            "Rejections per reason",
            ["reason", "count"],
            reasons,
            render.to_csv(reasons, ["reason", "count"]),
            f"{data.name}-rejections.csv",
            {"count": "count"},
        )
    )


def _period_text(report: ReportConfig, since: datetime) -> str:
    local = since.astimezone(report.zone)
    if report.period == "last_month":
        return local.strftime("%B %Y")
    if report.period == "last_week":
        return f"week of {local.date().isoformat()}"
    return local.date().isoformat()
