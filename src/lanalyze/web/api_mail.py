"""The mail index as a JSON API: ``/api/mail/{messages,rejections,counts}``.

The same read API as the console's mail pages and ``lanalyze mail ls [--rejected]``
(:mod:`lanalyze.mail.index`), so the three never disagree. Times are ISO 8601 or relative
(``-7d``), as in ``/api/flows``; ``since`` defaults to ``-7d``. A bad parameter is HTTP 400
with ``{"error": message}``.

Trust: query parameters are the (authenticated) user's; they reach SQL only as parameters
(``LIKE`` patterns escaped by the index). Index reads run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lanalyze.flows.query.timespec import TimeError, auto_bucket, window
from lanalyze.mail.index import VERDICTS, MessageQuery, Page, RejectionQuery
from lanalyze.web.mailstore import MailStore

MAX_PAGE_SIZE = 1000


class BadRequest(ValueError):
    pass


def _text(request: Request, name: str) -> str:
    return request.query_params.get(name, "")[:200].strip()


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name) or str(default)
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, not {text[:20]!r}")
    return int(text)


def _window(request: Request) -> tuple[float, float]:
    since, until = window(
        request.query_params.get("since"), request.query_params.get("until"), "-7d"
    )
    return since / 1000, until / 1000


def _page(page: Page) -> dict[str, Any]:
    return {"total": page.total, "page": page.page, "pages": page.pages, "rows": page.rows}


def _messages(request: Request, store: MailStore) -> Callable[[], Any]:
    verdict = request.query_params.get("verdict", "any")
    if verdict not in VERDICTS:
        raise BadRequest(f"verdict must be one of {', '.join(VERDICTS)}")
    since, until = _window(request)
    query = MessageQuery(
        sender=_text(request, "sender"),
        recipient=_text(request, "recipient"),
        subject=_text(request, "subject"),
        verdict=verdict,
        since=since,
        until=until,
        page=_int(request, "page", 1, 1, 1_000_000),
        page_size=_int(request, "page_size", 50, 1, MAX_PAGE_SIZE),
    )
    return lambda: _page(store.search(query))


def _rejections(request: Request, store: MailStore) -> Callable[[], Any]:
    since, until = _window(request)
    query = RejectionQuery(
        sender=_text(request, "sender"),
        recipient=_text(request, "recipient"),
        client=_text(request, "client"),
        reason=_text(request, "reason"),
        since=since,
        until=until,
        page=_int(request, "page", 1, 1, 1_000_000),
        page_size=_int(request, "page_size", 50, 1, MAX_PAGE_SIZE),
    )
    return lambda: _page(store.rejections(query))


def _counts(request: Request, store: MailStore) -> Callable[[], Any]:
    since, until = _window(request)
    default = max(60, auto_bucket(int(since * 1000), int(until * 1000)) // 1000)
    bucket = _int(request, "bucket", default, 60, 31 * 86400)
    if (until - since) / bucket > 5000:
        raise BadRequest("too many buckets: choose a bigger bucket or a shorter window")
    return lambda: store.counts(since, until, bucket)


def _endpoint(work: Callable[[Request, MailStore], Callable[[], Any]]) -> Any:
    async def handle(request: Request) -> Response:
        store = MailStore(request.app.state.console.data_dir)
        try:
            job = work(request, store)
        except (BadRequest, TimeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(await run_in_threadpool(job))

    return handle


routes = [
    Route("/api/mail/messages", _endpoint(_messages)),
    Route("/api/mail/rejections", _endpoint(_rejections)),
    Route("/api/mail/counts", _endpoint(_counts)),
]
