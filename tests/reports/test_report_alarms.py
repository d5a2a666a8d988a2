"""The `alarms` report kind: the alarms seen in the period, from the alarm store."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

from lanalyze.alarms.detect import Finding
from lanalyze.alarms.store import AlarmStore, store_path
from lanalyze.config import Config
from lanalyze.mailer import Mailer
from lanalyze.reports.build import build
from lanalyze.reports.message import compose, preview
from tests.reports.test_report_mail import check_mime, parse


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_alarms_of_the_period(data_dir: Path) -> None:
    store = AlarmStore(store_path(data_dir))
    store.record([Finding("flood", "198.51.100.7", 2e5, 1e5, "pps")], now=at("2025-11-09T23:00"))
    store.record([Finding("flood", "198.51.100.7", 3e5, 1e5, "pps")], now=at("2025-11-10T00:30"))
    store.record(
        [Finding("scan_horizontal", "10.0.0.5 <b>", 150, 100, "hosts")], now=at("2025-11-10T12:00")
    )
    store.record(
        [Finding("scan_vertical", "10.0.0.9", 150, 100, "ports")], now=at("2025-11-11T03:00")
    )  # the day after: not in the report
    store.close()
    config = Config.model_validate(
        {
            "general": {"data_dir": str(data_dir)},
            "reports": [{"name": "alarms", "kind": "alarms", "recipients": ["noc@example.test"]}],
        }
    )
    (report,) = config.reports
    data = build(report, config, datetime(2025, 11, 11, 7, 0, tzinfo=UTC))
    (table,) = data.tables
    rows = list(csv.DictReader(io.StringIO(table.csv)))
    # The flood opened the day before and still seen in the period is in it.
    assert [(r["algorithm"], r["subject"]) for r in rows] == [
        ("flood", "198.51.100.7"),
        ("scan_horizontal", "10.0.0.5 <b>"),
    ]
    assert rows[0]["opened"] == "2025-11-09T23:00:00Z" and rows[0]["peak"] == "300000"
    assert data.note == "2 alarms: 1 flood, 1 scan_horizontal"
    message = compose(data)
    Mailer(config).prepare(message, report.recipients)  # the header fields the mailer adds
    html, attachments = check_mime(parse(message.as_bytes()))
    assert attachments == {"alarms-alarms.csv": table.csv.encode()}
    assert "10.0.0.5 &lt;b&gt;" in html and "10.0.0.9" not in html
    assert "data:image/png;base64," in preview(data)


def test_no_alarm_store(data_dir: Path) -> None:
    config = Config.model_validate(
        {
            "general": {"data_dir": str(data_dir)},
            "reports": [{"name": "a", "kind": "alarms", "recipients": ["noc@example.test"]}],
        }
    )
    data = build(config.reports[0], config, datetime(2025, 11, 11, 7, 0, tzinfo=UTC))
    assert "no alarm store" in data.note and data.tables[0].rows == []
