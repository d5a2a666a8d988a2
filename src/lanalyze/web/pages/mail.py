"""Mail pages: the message list with search, one message with its verdict, the rejections
the SMTP server recorded, the queue.

Reads go through :class:`lanalyze.web.mailstore.MailStore` in threads (SQLite and file reads
never block the event loop). Queue actions are POSTs, which the auth middleware only lets
through with the session's CSRF token.

The message page shows the mail's HTML part inside ``<iframe sandbox srcdoc=...>``: with an
empty ``sandbox`` the frame has a unique origin and may run no script, submit no form and
navigate nothing; the frame's own ``<meta>`` CSP and the page's inherited CSP block every
remote resource (no tracking pixels, no remote CSS), so reading a message contacts no one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from lanalyze.mail.index import MARKS, VERDICTS, MessageQuery, RejectionQuery
from lanalyze.web.api_mail import MessageParams, RejectionParams
from lanalyze.web.mailexplain import explain, message_warnings
from lanalyze.web.mailstore import MailStore, parse_message
from lanalyze.web.pages.flows import REFRESH, format_utc_minute, parse_utc_minute
from lanalyze.web.security import MESSAGE_CSP
from lanalyze.web.templating import render

RANGES = {
    "1h": ("Last hour", 3600),
    "24h": ("Last 24 hours", 86400),
    "7d": ("Last 7 days", 7 * 86400),
    "30d": ("Last 30 days", 30 * 86400),
    "all": ("All time", 0),
}
REASON_LABELS = {
    "unknown_user": "Unknown user",
    "relay_denied": "Relay denied",
    "sender_not_allowed": "Sender not allowed",
    "header_from_not_allowed": "From: not allowed",
    "too_big": "Too big",
    "too_many_recipients": "Too many recipients",
    "too_many_errors": "Too many errors",
    "connection_limit": "Connection limit",
    "flood": "Pipelining flood",
    "bare_newline": "Bare CR/LF",
    "auth_required": "Auth required",
    "auth_failed": "Auth failed",
    "timeout": "Timeout",
    "policy_reject": "Policy reject (DMARC)",
    "local_error": "Local error",
    "other": "Other",
}
MAX_PAGE = 100_000
"""Page numbers of the mail lists stop here (a bigger one is read as this one)."""
HTML_FRAME_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"


@dataclass
class Window:
    """The time range a mail page's query string asks for: a preset, or custom (UTC)."""

    choice: str
    since: float | None
    until: float
    custom_from: str
    custom_to: str
    note: str = ""

    @property
    def label(self) -> str:
        if self.choice in RANGES:
            return RANGES[self.choice][0]
        return f"{self.custom_from} – {self.custom_to} UTC"

    @property
    def params(self) -> dict[str, str]:
        if self.choice == "custom":
            return {"range": "custom", "from": self.custom_from, "to": self.custom_to}
        return {"range": self.choice}


def _window(params: Mapping[str, str], now: float) -> Window:
    choice = params.get("range", "7d")
    custom_from, custom_to = params.get("from", "")[:32], params.get("to", "")[:32]
    if choice == "custom":
        since_ms = parse_utc_minute(custom_from)
        until_ms = parse_utc_minute(custom_to) if custom_to else int(now * 1000)
        if since_ms is not None and until_ms is not None and since_ms < until_ms:
            until = min(until_ms / 1000, now)
            return Window(choice, since_ms / 1000, until, custom_from, custom_to or "now")
        note = "The custom range needs a start before its end (UTC); showing the last 7 days."
        return _with_note(_window({}, now), note)
    if choice not in RANGES:
        choice = "7d"
    seconds = RANGES[choice][1]
    since = now - seconds if seconds else None
    start = since if since is not None else now - 30 * 86400
    return Window(
        choice,
        since,
        now,
        format_utc_minute(int(start * 1000)),
        format_utc_minute(int(now * 1000)),
    )


def _with_note(window: Window, note: str) -> Window:
    window.note = note
    return window


def _chart_span(window: Window) -> tuple[float, int]:
    """Start of the counts chart and its bucket: all-time shows the last 30 days."""
    since = window.since if window.since is not None else window.until - 30 * 86400
    span = window.until - since
    return since, 300 if span <= 3600 else 3600 if span <= 7 * 86400 else 86400


def _refresh(params: Mapping[str, str]) -> str:
    value = params.get("refresh", "0")
    return value if value in REFRESH else "0"


def _store(request: Request) -> MailStore:
    return MailStore(request.app.state.console.data_dir)


def _query(request: Request) -> tuple[MessageQuery, dict[str, str], Window]:
    params = request.query_params
    # The API's parameters, read leniently: what the page cannot use falls back to its default.
    asked = MessageParams.lenient(params)
    form = {
        "sender": asked.sender,
        "recipient": asked.recipient,
        "subject": asked.subject,
        "verdict": asked.verdict,
    }
    window = _window(params, time.time())
    form.update(window.params, refresh=_refresh(params))
    query = MessageQuery(
        sender=asked.sender,
        recipient=asked.recipient,
        subject=asked.subject,
        verdict=asked.verdict,
        since=window.since,
        until=window.until if window.choice == "custom" else None,
        page=min(asked.page, MAX_PAGE),
    )
    return query, form, window


async def message_list(request: Request) -> Response:
    store = _store(request)
    query, form, window = _query(request)
    since, bucket = _chart_span(window)
    result, counts = await asyncio.gather(
        asyncio.to_thread(store.search, query),
        asyncio.to_thread(store.counts, since, window.until, bucket),
    )

    def page_link(page: int) -> str:
        return "/mail?" + urlencode({**form, "page": str(page)})

    return render(
        request,
        "mail_list.html",
        {
            "result": result,
            "form": form,
            "window": window,
            "refresh_choices": REFRESH,
            "ranges": RANGES,
            "verdicts": VERDICTS,
            "mark_labels": MARKS,
            "counts": counts,
            "page_link": page_link,
        },
    )


async def rejected_list(request: Request) -> Response:
    store = _store(request)
    params = request.query_params
    asked = RejectionParams.lenient(params)
    form = {
        "sender": asked.sender,
        "recipient": asked.recipient,
        "client": asked.client,
        "reason": asked.reason,
    }
    window = _window(params, time.time())
    form.update(window.params, refresh=_refresh(params))
    query = RejectionQuery(
        sender=asked.sender,
        recipient=asked.recipient,
        client=asked.client,
        reason=asked.reason,
        since=window.since,
        until=window.until if window.choice == "custom" else None,
        page=min(asked.page, MAX_PAGE),
    )
    since, bucket = _chart_span(window)
    result, counts, reasons, summary = await asyncio.gather(
        asyncio.to_thread(store.rejections, query),
        asyncio.to_thread(store.counts, since, window.until, bucket),
        asyncio.to_thread(store.rejection_reasons),
        asyncio.to_thread(store.rejection_summary, window.since, window.until),
    )

    def link(**changes: str) -> str:
        return urlencode({**window.params, **changes})

    def page_link(page: int) -> str:
        return "/mail/rejected?" + urlencode({**form, "page": str(page)})

    return render(
        request,
        "mail_rejected.html",
        {
            "result": result,
            "form": form,
            "ranges": RANGES,
            "window": window,
            "refresh_choices": REFRESH,
            "summary": summary,
            "reasons": sorted(set(reasons) | ({form["reason"]} - {""})),
            "reason_labels": REASON_LABELS,
            "counts": counts,
            "link": link,
            "page_link": page_link,
        },
    )


async def message_view(request: Request) -> Response:
    store = _store(request)
    queue_id = str(request.path_params["queue_id"])
    row = await asyncio.to_thread(store.get, queue_id)
    if row is None:
        raise HTTPException(404, "no such message")
    raw = await asyncio.to_thread(store.raw, queue_id)
    parsed = parse_message(raw) if raw is not None else None
    header_from = parsed.header_from if parsed else []
    header_to = parsed.header_to if parsed else []
    if not header_from and row.get("header_from"):
        header_from = [str(row["header_from"])]
    warned = message_warnings(
        row.get("auth"), str(row.get("mail_from", "")), header_from, row["recipients"], header_to
    )
    frames = [
        f'<meta http-equiv="Content-Security-Policy" content="{HTML_FRAME_CSP}">' + html
        for html in (parsed.html_parts if parsed else [])
    ]
    return render(
        request,
        "mail_message.html",
        {
            "row": row,
            "parsed": parsed,
            "raw": raw.decode("utf-8", "replace") if raw is not None else None,
            "findings": explain(row.get("auth")),
            "warnings": warned.items,
            "forged": warned.forged,
            "sender_mismatch": warned.sender_mismatch,
            "recipient_mismatch": warned.recipient_mismatch,
            "header_from": header_from,
            "header_to": header_to,
            "frames": frames,
        },
        headers={"content-security-policy": MESSAGE_CSP},
    )


async def message_raw(request: Request) -> Response:
    store = _store(request)
    queue_id = str(request.path_params["queue_id"])
    raw = await asyncio.to_thread(store.raw, queue_id)
    if raw is None:
        raise HTTPException(404, "no such message")
    return Response(
        raw,
        media_type="text/plain; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{queue_id}.eml"',
            "content-security-policy": "default-src 'none'; sandbox",
        },
    )


async def queue_page(request: Request) -> Response:
    store = _store(request)
    now = time.time()
    (rows, destinations), series = await asyncio.gather(
        asyncio.to_thread(store.queue_and_destinations),
        asyncio.to_thread(store.counts, now - 86400, now, 3600),
    )
    counts: dict[str, int] = {"queued": 0, "deferred": 0, "hold": 0, "corrupt": 0}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return render(
        request,
        "mail_queue.html",
        {
            "rows": rows,
            "destinations": destinations,
            "now": now,
            "counts": counts,
            "series": series,
            "done": request.query_params.get("done", ""),
            "done_texts": DONE_TEXTS,
        },
    )


QUEUE_ACTIONS = ("retry", "flush", "hold", "release", "delete")
DESTINATION_ACTIONS = ("flush", "hold", "release", "delete")
# What the queue page says after an action, by QueueAdmin's outcome word.
DONE_TEXTS = {
    "ok": "done",
    "not_found": "the message is not in a queue this action applies to",
    "corrupt": "its queue file is corrupt; it was moved to queue/corrupt/ and not changed",
    "invalid": "not a queue id",
    "failed": "the queue file could not be moved or removed",
}


async def queue_action(request: Request) -> Response:
    store = _store(request)
    queue_id = str(request.path_params["queue_id"])
    action = str(request.path_params["action"])
    if action not in QUEUE_ACTIONS:
        raise HTTPException(404, "no such action")
    report = await asyncio.to_thread(store.queue_action, action, queue_id)
    result = report.results[0]
    outcome = f"{action}:{queue_id}:{'ok' if result.ok else result.outcome}"
    return RedirectResponse("/mail/queue?" + urlencode({"done": outcome}), status_code=303)


async def destination_action(request: Request) -> Response:
    store = _store(request)
    domain = str(request.path_params["domain"])
    action = str(request.path_params["action"])
    if action not in DESTINATION_ACTIONS:
        raise HTTPException(404, "no such action")
    report = await asyncio.to_thread(store.destination_action, action, domain)
    outcome = f"{action}:{domain}:{'ok' if not report.failed else report.failed[0].outcome}"
    return RedirectResponse("/mail/queue?" + urlencode({"done": outcome}), status_code=303)


routes = [
    Route("/mail", message_list),
    Route("/mail/rejected", rejected_list),
    Route("/mail/queue", queue_page),
    Route("/mail/queue/{queue_id}/{action}", queue_action, methods=["POST"]),
    Route("/mail/queue/destination/{domain}/{action}", destination_action, methods=["POST"]),
    Route("/mail/message/{queue_id}", message_view),
    Route("/mail/message/{queue_id}/raw", message_raw),
]
