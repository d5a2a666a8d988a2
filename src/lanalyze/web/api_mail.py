"""The mail index as a JSON API: ``/api/mail/{messages,rejections,counts}``.

The same read API as the console's mail pages and ``lanalyze mail ls [--rejected]``
(:mod:`lanalyze.mail.index`), so the three never disagree. Times are ISO 8601 or relative
(``-7d``), as in ``/api/flows``; ``since`` defaults to ``-7d``. Each route's query parameters
are a typed model below (the routes and their part of ``/api/openapi.json`` are generated from
them, :mod:`lanalyze.web.api`); a bad parameter is HTTP 400 with ``{"error": message}``.

Trust: query parameters are the (authenticated) user's; they reach SQL only as parameters
(``LIKE`` patterns escaped by the index), search text cut at 200 characters. Index reads run in
a worker thread.
"""

from __future__ import annotations

from typing import Annotated, Any

from prometheus_client import Counter, Histogram
from pydantic import Field
from starlette.requests import Request

from lanalyze import metrics
from lanalyze.flows.query.timespec import auto_bucket, window
from lanalyze.mail.index import VERDICTS, MessageQuery, Page, RejectionQuery
from lanalyze.web import api
from lanalyze.web.api import (
    INTEGER_SYNTAX,
    ApiMetrics,
    Endpoint,
    Integer,
    Job,
    Params,
    SearchText,
    enum_of,
    member_of,
)
from lanalyze.web.errors import BadRequest
from lanalyze.web.mailstore import MailStore

MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000
MAX_BUCKETS = 5000

METRICS = ApiMetrics(
    Counter(
        "lanalyze_api_mail_requests_total",
        "Mail index API requests, by route and outcome (ok, bad_request).",
        ["route", "outcome"],
        registry=metrics.REGISTRY,
    ),
    Histogram(
        "lanalyze_api_mail_request_seconds",
        "Time to answer a mail index API request, by route.",
        ["route"],
        registry=metrics.REGISTRY,
        buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    ),
)

Verdict = Annotated[str, member_of(VERDICTS), enum_of(VERDICTS)]


class MailWindow(Params):
    since: str | None = Field(None, description="Start: ISO 8601 or relative. Default -7d.")
    until: str | None = Field(None, description="End: ISO 8601 or relative. Default now.")

    def window(self) -> tuple[float, float]:
        """``[since, until)`` in Unix seconds; a time that cannot be read is a ``TimeError``."""
        since, until = window(self.since, self.until, "-7d")
        return since / 1000, until / 1000


class Paging(MailWindow):
    page: Integer = Field(1, ge=1, le=MAX_PAGE, description="Page, from 1.")
    page_size: Integer = Field(50, ge=1, le=MAX_PAGE_SIZE, description="Rows per page.")


class MessageParams(Paging):
    sender: SearchText = Field("", description="Envelope sender or From: contains this.")
    recipient: SearchText = Field("", description="A recipient contains this.")
    subject: SearchText = Field("", description="Subject contains this.")
    verdict: Verdict = Field("any", description="Verdict.")


class RejectionParams(Paging):
    sender: SearchText = Field("", description="Envelope sender contains this.")
    recipient: SearchText = Field("", description="Recipient contains this.")
    client: SearchText = Field("", description="Client address or HELO name contains this.")
    reason: SearchText = Field(
        "", description="This reason only (unknown_user, relay_denied, ...)."
    )


class CountParams(MailWindow):
    # The bounds go on the integer inside the optional, before the syntax check (see api).
    bucket: Annotated[int, Field(ge=60, le=31 * 86400), INTEGER_SYNTAX] | None = Field(
        None, description="Bucket in seconds (default: automatic)."
    )


def _page(page: Page) -> dict[str, Any]:
    return {"total": page.total, "page": page.page, "pages": page.pages, "rows": page.rows}


def _store(request: Request) -> MailStore:
    return MailStore(request.app.state.console.data_dir)


def _messages(request: Request, p: MessageParams) -> Job:
    since, until = p.window()
    query = MessageQuery(
        sender=p.sender,
        recipient=p.recipient,
        subject=p.subject,
        verdict=p.verdict,
        since=since,
        until=until,
        page=p.page,
        page_size=p.page_size,
    )
    store = _store(request)
    return lambda: _page(store.search(query))


def _rejections(request: Request, p: RejectionParams) -> Job:
    since, until = p.window()
    query = RejectionQuery(
        sender=p.sender,
        recipient=p.recipient,
        client=p.client,
        reason=p.reason,
        since=since,
        until=until,
        page=p.page,
        page_size=p.page_size,
    )
    store = _store(request)
    return lambda: _page(store.rejections(query))


def _counts(request: Request, p: CountParams) -> Job:
    since, until = p.window()
    bucket = p.bucket or max(60, auto_bucket(int(since * 1000), int(until * 1000)) // 1000)
    if (until - since) / bucket > MAX_BUCKETS:
        raise BadRequest("too many buckets: choose a bigger bucket or a shorter window")
    store = _store(request)
    return lambda: store.counts(since, until, bucket)


ENDPOINTS: list[Endpoint[Any]] = [
    Endpoint(
        "/api/mail/messages",
        "Accepted messages from the mail index, newest first, one page",
        MessageParams,
        "MailPage",
        _messages,
    ),
    Endpoint(
        "/api/mail/rejections",
        "What the SMTP server refused (recipients, senders, messages, sessions), one page",
        RejectionParams,
        "MailPage",
        _rejections,
    ),
    Endpoint(
        "/api/mail/counts",
        "Accepted, rejected and forged messages per time bucket",
        CountParams,
        "MailCounts",
        _counts,
    ),
]

SCHEMAS: dict[str, Any] = {
    "MailPage": {
        "type": "object",
        "properties": {
            "total": {"type": "integer"},
            "page": {"type": "integer"},
            "pages": {"type": "integer"},
            "rows": {"type": "array", "items": {"type": "object"}},
        },
    },
    "MailCounts": {
        "type": "object",
        "description": "`times` (ms), `bucket_ms` and `series` [{name: accepted | "
        "rejected | forged, values}].",
    },
}

# Errors while reading the index are ours, not the request's: no work_errors (a 500).
routes = [api.route(endpoint, METRICS) for endpoint in ENDPOINTS]
