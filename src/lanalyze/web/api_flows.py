"""The flow reports as a JSON API: ``/api/flows/{top,series,list,interfaces,status,exporters}``.

Same parameters and the same validation as ``lanalyze flows top|series|list|...``: a bad
request is HTTP 400 with ``{"error": message}``; a filter error also carries
``{"filter": {"message", "text", "column"}}`` and the message with its caret line. The OpenAPI
document is ``/api/openapi.json``; it is written by hand (a small dict) because Starlette has
no schema generation of its own and the API is small.

Trust: query parameters are the (authenticated) user's; they are parsed into typed values and
reach SQL only as parameters (see :mod:`lanalyze.flows.query`). Reports run in a worker thread
so DuckDB never blocks the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lanalyze import metrics
from lanalyze.flows.query import reports
from lanalyze.flows.query.filterlang import FilterError
from lanalyze.flows.query.timespec import window
from lanalyze.flows.store import paths

REQUESTS = Counter(
    "lanalyze_api_flow_reports_total",
    "Flow report API requests, by report and outcome (ok, bad_request).",
    ["report", "outcome"],
    registry=metrics.REGISTRY,
)
SECONDS = Histogram(
    "lanalyze_api_flow_report_seconds",
    "Time to answer a flow report API request, by report.",
    ["report"],
    registry=metrics.REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class BadRequest(ValueError):
    pass


def flow_dir(request: Request) -> Path:
    """``<general.data_dir>/flows`` of the app (``app.state.flow_dir`` overrides it)."""
    state = request.app.state
    override = getattr(state, "flow_dir", None)
    if override is not None:
        return Path(override)
    return paths.flow_dir(Path(state.console.data_dir))


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {text!r}") from None


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value not in (None, "") else None


def _flag(request: Request, name: str) -> bool:
    return (request.query_params.get(name) or "").lower() in ("1", "true", "yes")


def _error(exc: ValueError) -> JSONResponse:
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, FilterError):
        body["filter"] = {"message": exc.message, "text": exc.text, "column": exc.column}
    return JSONResponse(body, status_code=400)


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(work: Callable[[Request], Callable[[], Any]]) -> Handler:
    """Parse in the request, run the report in a thread, answer JSON or 400."""
    report = work.__name__.strip("_")

    async def handle(request: Request) -> Response:
        try:
            job = work(request)
            with SECONDS.labels(report).time():
                result = await run_in_threadpool(job)
        except ValueError as exc:
            REQUESTS.labels(report, "bad_request").inc()
            return _error(exc)
        REQUESTS.labels(report, "ok").inc()
        return JSONResponse(result)

    return handle


def _top(request: Request) -> Callable[[], Any]:
    by = _text(request, "by")
    if by is None:
        raise BadRequest("by is required (for example by=srcip)")
    since, until = window(_text(request, "since"), _text(request, "until"))
    data = flow_dir(request)
    order = _text(request, "order") or "bytes"
    limit = _int(request, "n", 10)
    flt = _text(request, "filter")
    raw = _flag(request, "raw")

    def job() -> Any:
        return reports.top(
            data,
            by,
            since=since,
            until=until,
            order=order,
            limit=limit,
            filter=flt,
            use_rollups=not raw,
        ).to_json()

    return job


def _series(request: Request) -> Callable[[], Any]:
    since, until = window(_text(request, "since"), _text(request, "until"))
    data = flow_dir(request)
    bucket, by, flt = _text(request, "bucket"), _text(request, "by"), _text(request, "filter")
    order = _text(request, "order") or "bytes"
    top_n = _int(request, "n", 5)
    raw = _flag(request, "raw")

    def job() -> Any:
        return reports.series(
            data,
            since=since,
            until=until,
            bucket=bucket,
            by=by,
            top_n=top_n,
            order=order,
            filter=flt,
            use_rollups=not raw,
        ).to_json()

    return job


def _list(request: Request) -> Callable[[], Any]:
    since, until = window(_text(request, "since"), _text(request, "until"))
    data, flt, limit = flow_dir(request), _text(request, "filter"), _int(request, "n", 20)

    def job() -> Any:
        flows = reports.list_flows(data, since=since, until=until, filter=flt, limit=limit)
        return {"flows": [flow.to_json() for flow in flows]}

    return job


def _interfaces(request: Request) -> Callable[[], Any]:
    since, until = window(_text(request, "since"), _text(request, "until"))
    data = flow_dir(request)
    exporter = _text(request, "exporter")
    interface_text = _text(request, "if")
    if (exporter is None) != (interface_text is None):
        raise BadRequest("exporter and if go together")
    if exporter is not None:
        interface = _int(request, "if", 0)
        bucket = _text(request, "bucket")

        def one() -> Any:
            return reports.interface_series(
                data,
                exporter=exporter,
                interface=interface,
                since=since,
                until=until,
                bucket=bucket,
            ).to_json()

        return one
    limit, flt = _int(request, "n", 10), _text(request, "filter")
    order = _text(request, "order") or "bytes"

    def job() -> Any:
        rows = reports.top_interfaces(
            data, since=since, until=until, order=order, limit=limit, filter=flt
        )
        return {"interfaces": [row.to_json() for row in rows]}

    return job


def _status(request: Request) -> Callable[[], Any]:
    data = flow_dir(request)
    return lambda: {"tables": [table.to_json() for table in reports.status(data)]}


def _exporters(request: Request) -> Callable[[], Any]:
    path = flow_dir(request) / "exporters.json"

    def job() -> Any:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"exporters": []}
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot read {path.name}: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest(f"{path.name} is not an exporters file")
        return data

    return job


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(OPENAPI)


# --- the OpenAPI document --------------------------------------------------------------------


def _param(name: str, description: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind, **extra}
    return {"name": name, "in": "query", "description": description, "schema": schema}


_WINDOW = [
    _param("since", "Start: ISO 8601 (2024-05-01T12:00Z) or relative (-1h, -30d). Default -1h."),
    _param("until", "End: ISO 8601 or relative. Default now."),
]
_MAIL_WINDOW = [
    _param("since", "Start: ISO 8601 or relative. Default -7d."),
    _param("until", "End: ISO 8601 or relative. Default now."),
]
_MAIL_PAGING = [
    _param("page", "Page, from 1.", "integer", default=1, minimum=1),
    _param("page_size", "Rows per page.", "integer", default=50, maximum=1000),
]
_FILTER = _param(
    "filter", "nfdump-style filter, e.g. `proto tcp and dst port 443 and not net 10.0.0.0/8`."
)
_ORDER = _param("order", "Sort by.", enum=["bytes", "packets", "flows"], default="bytes")
_ERRORS = {
    "400": {
        "description": "Bad parameters; `filter` details a filter error (caret column).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "401": {"description": "Login required."},
}


def _get(summary: str, parameters: list[dict[str, Any]], schema: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                    },
                },
                **_ERRORS,
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "lanalyze flow reports and mail index",
        "version": "1",
        "description": "Top-N, time series, raw flows, interfaces and store status. Times are "
        "those the collector received flows at (UTC); bytes and packets are scaled by sampling.",
    },
    "paths": {
        "/api/flows/top": _get(
            "Top N values of one or more dimensions",
            [
                _param(
                    "by",
                    "Dimensions, comma-separated: srcip, dstip, ip, srcport, dstport, port, app, "
                    "proto, conversation, conversation-ports, exporter, inif, outif, if, srcas, "
                    "dstas, as, tos, dscp, flags, srcnet/N, dstnet/N, net/N, or catalogue "
                    "column names.",
                )
                | {"required": True},
                _ORDER,
                _param("n", "Rows (0: all).", "integer", default=10, minimum=0),
                *_WINDOW,
                _FILTER,
                _param("raw", "Read raw flows only (skip rollups).", "boolean"),
            ],
            "Top",
        ),
        "/api/mail/messages": _get(
            "Accepted messages from the mail index, newest first, one page",
            [
                _param("sender", "Envelope sender or From: contains this."),
                _param("recipient", "A recipient contains this."),
                _param("subject", "Subject contains this."),
                _param("verdict", "Verdict.", enum=["any", "pass", "fail", "forged", "none"]),
                *_MAIL_WINDOW,
                *_MAIL_PAGING,
            ],
            "MailPage",
        ),
        "/api/mail/rejections": _get(
            "What the SMTP server refused (recipients, senders, messages, sessions), one page",
            [
                _param("sender", "Envelope sender contains this."),
                _param("recipient", "Recipient contains this."),
                _param("client", "Client address or HELO name contains this."),
                _param("reason", "This reason only (unknown_user, relay_denied, ...)."),
                *_MAIL_WINDOW,
                *_MAIL_PAGING,
            ],
            "MailPage",
        ),
        "/api/mail/counts": _get(
            "Accepted, rejected and forged messages per time bucket",
            [
                *_MAIL_WINDOW,
                _param("bucket", "Bucket in seconds (default: automatic).", "integer", minimum=60),
            ],
            "MailCounts",
        ),
        "/api/flows/series": _get(
            "Bits/s, packets/s and flows/s per time bucket, optionally per top value + other",
            [
                _param("bucket", "Bucket size: 10s, 1m, 5m, 1h, 1d (default from the range)."),
                _param("by", "Split by the top values of this dimension."),
                _param("n", "Top values to split by.", "integer", default=5, minimum=1),
                _ORDER,
                *_WINDOW,
                _FILTER,
                _param("raw", "Read raw flows only (skip rollups).", "boolean"),
            ],
            "Series",
        ),
        "/api/flows/list": _get(
            "Raw flows matching a filter, newest first",
            [
                _param("n", "At most this many.", "integer", default=20, minimum=1),
                *_WINDOW,
                _FILTER,
            ],
            "FlowList",
        ),
        "/api/flows/interfaces": _get(
            "Top interfaces by traffic, or one interface's in/out bits/s over time",
            [
                _param("n", "Rows (0: all).", "integer", default=10, minimum=0),
                _param(
                    "order",
                    "Rank the top list by in + out bytes, packets or flows.",
                    enum=["bytes", "packets", "flows"],
                    default="bytes",
                ),
                _param("exporter", "With `if`: this exporter's interface over time."),
                _param("if", "ifIndex, with `exporter`.", "integer"),
                _param("bucket", "Bucket size with `exporter` and `if`."),
                *_WINDOW,
                _FILTER,
            ],
            "Interfaces",
        ),
        "/api/flows/status": _get("What is stored, per table", [], "Status"),
        "/api/flows/exporters": _get(
            "Exporters seen by the collector, with counters and last-seen time", [], "Exporters"
        ),
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "filter": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "text": {"type": "string"},
                            "column": {"type": "integer"},
                        },
                    },
                },
            },
            "Top": {
                "type": "object",
                "properties": {
                    "dimensions": {"type": "array", "items": {"type": "string"}},
                    "order": {"type": "string"},
                    "since": {"type": "string", "format": "date-time"},
                    "until": {"type": "string", "format": "date-time"},
                    "plan": {"type": "string", "description": "Tables read."},
                    "total": {"$ref": "#/components/schemas/Counters"},
                    "rows": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "description": "One key per dimension, then bytes, packets, flows, "
                            "bps, pps (averages over the window) and share (% of the total).",
                            "additionalProperties": True,
                        },
                    },
                },
            },
            "Counters": {
                "type": "object",
                "properties": {
                    "bytes": {"type": "integer"},
                    "packets": {"type": "integer"},
                    "flows": {"type": "integer"},
                },
            },
            "Series": {
                "type": "object",
                "properties": {
                    "bucket_seconds": {"type": "integer"},
                    "dimension": {"type": ["string", "null"]},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "points": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "time": {"type": "string", "format": "date-time"},
                                "group": {"type": "string"},
                                "bps": {"type": "number"},
                                "pps": {"type": "number"},
                                "fps": {"type": "number"},
                                "bytes": {"type": "integer"},
                                "packets": {"type": "integer"},
                                "flows": {"type": "integer"},
                            },
                        },
                    },
                },
            },
            "FlowList": {
                "type": "object",
                "properties": {"flows": {"type": "array", "items": {"type": "object"}}},
            },
            "Interfaces": {
                "type": "object",
                "description": "`interfaces` (top list: exporter, interface, in/out bytes, "
                "packets, flows and bps; name, alias, description, speed_bps, in_util_pct, "
                "out_util_pct from SNMP, null when unknown; ranked by in + out of `order`) or, "
                "with exporter and if, `points` (time, in_bps, out_bps, in_util_pct, "
                "out_util_pct) and the interface's name, alias and speed_bps.",
            },
            "Status": {
                "type": "object",
                "properties": {
                    "tables": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "table": {"type": "string"},
                                "files": {"type": "integer"},
                                "rows": {"type": "integer"},
                                "bytes": {"type": "integer"},
                                "first": {"type": ["string", "null"]},
                                "last": {"type": ["string", "null"]},
                            },
                        },
                    }
                },
            },
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
            "Exporters": {
                "type": "object",
                "description": "The collector's exporters.json (format owned by the collector).",
            },
        }
    },
}

routes = [
    Route("/api/flows/top", _endpoint(_top)),
    Route("/api/flows/series", _endpoint(_series)),
    Route("/api/flows/list", _endpoint(_list)),
    Route("/api/flows/interfaces", _endpoint(_interfaces)),
    Route("/api/flows/status", _endpoint(_status)),
    Route("/api/flows/exporters", _endpoint(_exporters)),
    Route("/api/openapi.json", openapi_endpoint),
]
