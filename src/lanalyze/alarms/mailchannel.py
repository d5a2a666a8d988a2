"""The e-mail channel of alarm notifications: one short mail per notice, through
:mod:`lanalyze.mailer` (this process's mail server, the data directory's queue, or
``mailer.relay_host``), so alarm mail gets the queue's retries and bounces.

Routing, de-duplication and rate limits are the :class:`~lanalyze.alarms.notify.Notifier`'s;
this channel only writes and hands on the message. The mail is HTML (inline CSS, a table of
the alarm and its evidence, the alarm's values over time as an inline PNG referenced by
``cid:`` when the store has points for it) with a plain-text part.

Trust: subjects and evidence come from flows and mail (peers' text): HTML-escaped in the
body; the Subject is set through :mod:`email` (encoded, line breaks removed) and cut to 200
characters.
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from lanalyze.alarms.config import EmailConfig
from lanalyze.alarms.notify import Notice
from lanalyze.mailer import Mailer
from lanalyze.reports import png

CELL = "padding:3px 8px;border-bottom:1px solid #e6e6e6;font-family:Helvetica,Arial,sans-serif;"
SUBJECT_MAX = 200
POINTS_MAX = 2000
"""Values drawn at most (the latest): the chart is 640 pixels wide."""


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _oneline(text: str) -> str:
    return " ".join(str(text).split())


def subject_of(notice: Notice) -> str:
    a = notice.alarm
    text = f"[lanalyze] {a['severity']} {a['algorithm']} {a['subject']}: {notice.event}"
    return _oneline(text)[:SUBJECT_MAX]


def alarm_rows(notice: Notice) -> list[tuple[str, str]]:
    a = notice.alarm
    rows = [
        ("event", notice.event),
        ("alarm", str(a.get("id", ""))),
        ("severity", str(a.get("severity", ""))),
        ("algorithm", str(a.get("algorithm", ""))),
        ("subject", str(a.get("subject", ""))),
        (
            "value",
            f"{a.get('value', 0):g} (threshold {a.get('threshold', 0):g} "
            f"{a.get('unit', '')})".rstrip(),
        ),
        ("opened", _when(a.get("opened_at"))),
        ("last seen", _when(a.get("last_seen"))),
    ]
    if a.get("closed_at"):
        rows.append(("closed", _when(a.get("closed_at"))))
    evidence = a.get("evidence") or {}
    if isinstance(evidence, dict):
        for key, value in evidence.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append((str(key), text[:2000]))
    return rows


def compose(notice: Notice, points: list[tuple[float, float]]) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["Subject"] = subject_of(notice)
    rows = alarm_rows(notice)
    message.set_content(notice.summary + "\n\n" + "\n".join(f"{k}: {v}" for k, v in rows) + "\n")
    cid = f"alarm.{secrets.token_hex(6)}@lanalyze"
    chart = ""
    if points:
        chart = (
            f'<img src="cid:{cid}" width="640" height="240" alt="values over time" '
            'style="display:block;border:0;margin:8px 0">'
        )
    table = "".join(
        f'<tr><th style="{CELL}text-align:left;background:#f4f6f8">{html.escape(k)}</th>'
        f'<td style="{CELL}">{html.escape(v)}</td></tr>'
        for k, v in rows
    )
    body = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        '<body style="margin:0;padding:16px;color:#222">'
        f'<h2 style="font-family:Helvetica,Arial,sans-serif;font-size:17px;margin:0 0 8px">'
        f"{html.escape(notice.summary)}</h2>{chart}"
        f'<table cellspacing="0" style="border-collapse:collapse;font-size:12px">{table}</table>'
        "</body></html>\n"
    )
    message.add_alternative(body, subtype="html")
    if points:
        parts = message.get_payload()
        assert isinstance(parts, list)
        html_part = parts[1]
        assert isinstance(html_part, EmailMessage)
        values = [value for _, value in points[-POINTS_MAX:]]
        html_part.add_related(
            png.line_chart([values]),
            "image",
            "png",
            cid=f"<{cid}>",
            disposition="inline",
            filename="alarm.png",
        )
    return message


class EmailChannel:
    """A :class:`~lanalyze.alarms.notify.Channel` mailing each notice to ``recipients``."""

    def __init__(self, config: EmailConfig, index: int, mailer: Mailer, data_dir: Path) -> None:
        self.config = config
        self.route = config
        self.name = f"email{index}"
        self.mailer = mailer
        self.data_dir = data_dir

    def _points(self, alarm_id: Any) -> list[tuple[float, float]]:
        from lanalyze.alarms.store import AlarmStore

        if not isinstance(alarm_id, int) or alarm_id <= 0:
            return []
        store = AlarmStore.open_readonly(self.data_dir)
        if store is None:
            return []
        with store:
            return store.points(alarm_id)

    async def send(self, notice: Notice) -> None:
        points = await asyncio.to_thread(self._points, notice.alarm.get("id"))
        await self.mailer.send(compose(notice, points), list(self.config.recipients))
