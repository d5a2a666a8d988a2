"""A report as one mail: HTML with inline CSS and tables, charts as inline PNG parts
(``multipart/related``, referenced by ``cid:``), a plain-text part, and the data as CSV
attachments; or as one self-contained HTML page for ``lanalyze reports preview``.

Structure (RFC 2046, RFC 2387 for ``multipart/related``, RFC 2392 for ``cid:`` URLs)::

    multipart/mixed
      multipart/alternative
        text/plain
        multipart/related
          text/html            <img src="cid:chart0.<id>@lanalyze">
          image/png            Content-ID: <chart0.<id>@lanalyze>, inline
      text/csv                 attachment (one per table)

No remote content: mail clients block it, and a report must read the same offline. CSS is
inline on each element (several clients drop ``<style>`` blocks).

Trust: table cells carry peers' text (host names, subjects, rejection reasons): every value
is HTML-escaped; header fields are set through :mod:`email`, which encodes them.
"""

from __future__ import annotations

import base64
import html
import secrets
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from lanalyze.reports import png
from lanalyze.reports.build import Chart, ReportData, Table

HTML_ROWS = 50
"""Rows of a table shown in the mail's HTML (the CSV attachment has them all): a week of
15-minute buckets is thousands of rows no one reads in a mail, and megabytes of markup."""
FONT = "font-family:Helvetica,Arial,sans-serif;"
CELL = "padding:3px 8px;border-bottom:1px solid #e6e6e6;"


def _human(value: float, unit: str, base: int = 1000) -> str:
    from lanalyze.flows.query.render import human

    return human(value, unit, base)


def _cell(value: Any, kind: str | None) -> tuple[str, bool]:
    """The text of a cell and whether it is a number (right-aligned)."""
    if value is None:
        return "-", False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if kind == "bytes":
            return _human(value, "B"), True
        if kind == "bps":
            return _human(value, "bps"), True
        if kind == "percent":
            return f"{value:.1f}%", True
        if isinstance(value, float):
            return (f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"), True
        return f"{value:,}", True
    return str(value), False


def _table_html(table: Table, numbered: bool) -> str:
    head = "".join(
        f'<th style="{CELL}text-align:left;background:#f4f6f8">{html.escape(c)}</th>'
        for c in (["#"] if numbered else []) + table.columns
    )
    body = []
    for n, row in enumerate(table.rows[:HTML_ROWS], start=1):
        cells = [f'<td style="{CELL}color:#888">{n}</td>'] if numbered else []
        for column in table.columns:
            text, number = _cell(row.get(column), table.formats.get(column))
            align = "text-align:right;" if number else ""
            cells.append(f'<td style="{CELL}{align}">{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        span = len(table.columns) + (1 if numbered else 0)
        body.append(f'<tr><td colspan="{span}" style="{CELL}color:#888">no data</td></tr>')
    if len(table.rows) > HTML_ROWS:
        span = len(table.columns) + (1 if numbered else 0)
        body.append(
            f'<tr><td colspan="{span}" style="{CELL}color:#888">first {HTML_ROWS} of '
            f"{len(table.rows)} rows; all of them in {html.escape(table.filename)}</td></tr>"
        )
    return (
        f'<h3 style="{FONT}font-size:15px;margin:18px 0 6px">{html.escape(table.title)}</h3>'
        f'<table cellspacing="0" style="{FONT}font-size:12px;border-collapse:collapse">'
        f"<tr>{head}</tr>{''.join(body)}</table>"
    )


def _legend(chart: Chart) -> str:
    items = "".join(
        f'<span style="display:inline-block;width:10px;height:10px;'
        f'background:{png.colour_hex(i)};margin:0 4px 0 12px"></span>{html.escape(name)}'
        for i, name in enumerate(chart.legend)
    )
    return f'<div style="{FONT}font-size:12px;color:#444">{html.escape(chart.title)}{items}</div>'


def chart_png(chart: Chart) -> bytes:
    if chart.kind == "line":
        return png.line_chart(chart.series)
    return png.bar_chart(chart.series)


def render_html(data: ReportData, image_src: list[str]) -> str:
    """The HTML body; ``image_src[i]`` is chart ``i``'s URL (``cid:...`` or ``data:...``)."""
    zone = data.time_zone
    since = data.since.astimezone(_zone(zone)).strftime("%Y-%m-%d %H:%M")
    until = data.until.astimezone(_zone(zone)).strftime("%Y-%m-%d %H:%M")
    parts = [
        f'<h2 style="{FONT}font-size:18px;margin:0 0 4px">{html.escape(data.title)}</h2>',
        f'<p style="{FONT}font-size:12px;color:#555;margin:0 0 12px">'
        f"{html.escape(since)} .. {html.escape(until)} ({html.escape(zone)})"
        + (f", filter <code>{html.escape(data.filter)}</code>" if data.filter else "")
        + (f"<br>{html.escape(data.note)}" if data.note else "")
        + "</p>",
    ]
    for chart, src in zip(data.charts, image_src, strict=True):
        parts.append(_legend(chart))
        parts.append(
            f'<img src="{html.escape(src)}" width="640" height="240" '
            f'alt="{html.escape(chart.title)}" style="display:block;border:0;margin:4px 0 8px">'
        )
    for number, table in enumerate(data.tables):
        parts.append(_table_html(table, numbered=number == 0 and data.kind != "mail"))
    parts.append(
        f'<p style="{FONT}font-size:11px;color:#888;margin-top:18px">'
        f"lanalyze scheduled report {html.escape(data.name)}; the data is attached as CSV.</p>"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(data.title)}</title></head>"
        f'<body style="margin:0;padding:16px;background:#ffffff;color:#222">'
        + "".join(parts)
        + "</body></html>\n"
    )


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def render_text(data: ReportData) -> str:
    lines = [data.title, f"{data.since.isoformat()} .. {data.until.isoformat()}"]
    if data.note:
        lines.append(data.note)
    for table in data.tables:
        lines += ["", table.title, table.csv.rstrip("\n") or "(no data)"]
    return "\n".join(lines) + "\n"


def compose(data: ReportData) -> EmailMessage:
    """The report as a MIME message (no From/To yet: the mailer sets them)."""
    message = EmailMessage(policy=SMTP)
    message["Subject"] = data.title
    message.set_content(render_text(data))
    token = secrets.token_hex(6)
    cids = [f"chart{i}.{token}@lanalyze" for i in range(len(data.charts))]
    message.add_alternative(render_html(data, [f"cid:{cid}" for cid in cids]), subtype="html")
    parts = message.get_payload()
    assert isinstance(parts, list)  # what add_alternative made: [text/plain, text/html]
    html_part = parts[1]
    assert isinstance(html_part, EmailMessage)
    for chart, cid in zip(data.charts, cids, strict=True):
        html_part.add_related(
            chart_png(chart),
            "image",
            "png",
            cid=f"<{cid}>",
            disposition="inline",
            filename=cid.split(".", 1)[0] + ".png",
        )
    for table in data.tables:
        message.add_attachment(
            table.csv.encode(),
            "text",
            "csv",
            filename=table.filename,
            params={"charset": "utf-8"},  # interface and host names may be UTF-8
        )
    return message


def preview(data: ReportData) -> str:
    """One HTML page with the charts as ``data:`` URLs (for a browser, not for mail)."""
    sources = [
        "data:image/png;base64," + base64.b64encode(chart_png(chart)).decode()
        for chart in data.charts
    ]
    return render_html(data, sources)
