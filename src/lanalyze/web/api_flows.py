"""The flow reports as a JSON API: ``/api/flows/{top,series,list,interfaces,status,exporters}``.

Same parameters and the same validation as ``lanalyze flows top|series|list|...``: a bad
request is HTTP 400 with ``{"error": message}``; a filter error also carries
``{"filter": {"message", "text", "column"}}`` and the message with its caret line. Each route's
query parameters are a typed model below; the routes and the OpenAPI document
``/api/openapi.json`` (of the whole API, mail routes too) are generated from them
(:mod:`lanalyze.web.api`).

Trust: query parameters are the (authenticated) user's; they are parsed into typed values and
reach SQL only as parameters (see :mod:`lanalyze.flows.query`). Ranges the reports layer owns
(row limits, series count, ifIndex) are checked there, in the CLI's words, and documented here.
Reports run in a worker thread so DuckDB never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Self

from prometheus_client import Counter, Histogram
from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lanalyze import metrics
from lanalyze.flows.query import names, render, reports
from lanalyze.flows.query.reports import MAX_ROWS, ORDERS
from lanalyze.flows.query.reports.exporters import exporters_overview
from lanalyze.flows.query.timespec import window
from lanalyze.flows.store import paths
from lanalyze.web import api, api_alarms, api_mail
from lanalyze.web.api import (
    ApiMetrics,
    Endpoint,
    Flag,
    Integer,
    Job,
    Params,
    bounds,
    enum_of,
    member_of,
)
from lanalyze.web.errors import BadRequest

METRICS = ApiMetrics(
    Counter(
        "lanalyze_api_flow_reports_total",
        "Flow report API requests, by report and outcome (ok, bad_request).",
        ["report", "outcome"],
        registry=metrics.REGISTRY,
    ),
    Histogram(
        "lanalyze_api_flow_report_seconds",
        "Time to answer a flow report API request, by report.",
        ["report"],
        registry=metrics.REGISTRY,
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    ),
)


def flow_dir(request: Request) -> Path:
    """``<general.data_dir>/flows`` of the app (``app.state.flow_dir`` overrides it)."""
    state = request.app.state
    override = getattr(state, "flow_dir", None)
    if override is not None:
        return Path(override)
    return paths.flow_dir(Path(state.console.data_dir))


# --- parameters -----------------------------------------------------------------------------

Order = Annotated[str, member_of(ORDERS), enum_of(ORDERS)]


class FlowWindow(Params):
    since: str | None = Field(
        None,
        description="Start: ISO 8601 (2024-05-01T12:00Z) or relative (-1h, -30d). Default -1h.",
    )
    until: str | None = Field(None, description="End: ISO 8601 or relative. Default now.")
    filter: str | None = Field(
        None,
        description="nfdump-style filter, e.g. `proto tcp and dst port 443 and not net "
        "10.0.0.0/8`.",
    )

    def window(self) -> tuple[int, int]:
        """``[since, until)`` in UTC ms; a time that cannot be read is a ``TimeError``."""
        return window(self.since, self.until)


class Resolve(Params):
    resolve: Flag = Field(
        False,
        description="Add `COLUMN_name` beside each address column: its reverse DNS name "
        "(null when not found within flows.query.names.budget), as the CLI's --resolve.",
    )


class TopParams(FlowWindow, Resolve):
    by: str = Field(
        description="Dimensions, comma-separated: srcip, dstip, ip, srcport, dstport, port, "
        "app, proto, conversation, conversation-ports, exporter, inif, outif, if, srcas, "
        "dstas, as, tos, dscp, flags, srcnet/N, dstnet/N, net/N, or catalogue column names.",
        examples=["srcip"],
    )
    order: Order = Field("bytes", description="Sort by.")
    n: Integer = Field(10, description="Rows (0: all).", json_schema_extra=bounds(0, MAX_ROWS))
    raw: Flag = Field(False, description="Read raw flows only (skip rollups).")


class SeriesParams(FlowWindow, Resolve):
    bucket: str | None = Field(
        None, description="Bucket size: 10s, 1m, 5m, 1h, 1d (default from the range)."
    )
    by: str | None = Field(None, description="Split by the top values of this dimension.")
    # reports.series checks 1..50 itself.
    n: Integer = Field(5, description="Top values to split by.", json_schema_extra=bounds(1, 50))
    order: Order = Field("bytes", description="Rank the top values by.")
    raw: Flag = Field(False, description="Read raw flows only (skip rollups).")


class ListParams(FlowWindow, Resolve):
    n: Integer = Field(20, description="At most this many.", json_schema_extra=bounds(1, MAX_ROWS))


class InterfacesParams(FlowWindow, Resolve):
    n: Integer = Field(10, description="Rows (0: all).", json_schema_extra=bounds(0, MAX_ROWS))
    order: Order = Field(
        "bytes", description="Rank the top list by in + out bytes, packets or flows."
    )
    exporter: str | None = Field(
        None, description="With `if`: this exporter's interface over time."
    )
    interface: Integer | None = Field(
        None,
        alias="if",
        description="ifIndex, with `exporter`.",
        json_schema_extra=bounds(0, 2**32 - 1),
    )
    bucket: str | None = Field(None, description="Bucket size with `exporter` and `if`.")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.exporter is None) != (self.interface is None):
            raise ValueError("exporter and if go together")
        return self


class NoParams(Params):
    pass


# --- the reports ----------------------------------------------------------------------------


def _add_names(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    # In the job's worker thread: waits at most the console's budget, like the Names toggle.
    names.add_names(rows, columns, names.shared().config.budget)


def _top(request: Request, p: TopParams) -> Job:
    since, until = p.window()
    data = flow_dir(request)

    def job() -> Any:
        report = reports.top(
            data,
            p.by,
            since=since,
            until=until,
            order=p.order,
            limit=p.n,
            filter=p.filter,
            use_rollups=not p.raw,
        )
        result = report.to_json()
        if p.resolve:
            _add_names(result["rows"], report.dimensions)
        return result

    return job


def _series(request: Request, p: SeriesParams) -> Job:
    since, until = p.window()
    data = flow_dir(request)

    def job() -> Any:
        result = reports.series(
            data,
            since=since,
            until=until,
            bucket=p.bucket,
            by=p.by,
            top_n=p.n,
            order=p.order,
            filter=p.filter,
            use_rollups=not p.raw,
        ).to_json()
        if p.resolve:
            _add_names(result["points"], render.SERIES_COLUMNS)
        return result

    return job


def _list(request: Request, p: ListParams) -> Job:
    since, until = p.window()
    data = flow_dir(request)

    def job() -> Any:
        flows = reports.list_flows(data, since=since, until=until, filter=p.filter, limit=p.n)
        rows = [flow.to_json() for flow in flows]
        if p.resolve:
            _add_names(rows, render.LIST_COLUMNS)
        return {"flows": rows}

    return job


def _interfaces(request: Request, p: InterfacesParams) -> Job:
    since, until = p.window()
    data = flow_dir(request)
    if p.exporter is not None and p.interface is not None:
        exporter, interface = p.exporter, p.interface

        def one() -> Any:
            return reports.interface_series(
                data,
                exporter=exporter,
                interface=interface,
                since=since,
                until=until,
                bucket=p.bucket,
            ).to_json()

        return one

    def job() -> Any:
        rows = reports.top_interfaces(
            data, since=since, until=until, order=p.order, limit=p.n, filter=p.filter
        )
        found = [row.to_json() for row in rows]
        if p.resolve:
            _add_names(found, render.INTERFACE_COLUMNS)
        return {"interfaces": found}

    return job


def _status(request: Request, p: NoParams) -> Job:
    data = flow_dir(request)
    return lambda: {"tables": [table.to_json() for table in reports.status(data)]}


def _exporters(request: Request, p: NoParams) -> Job:
    # flow_dir is <data_dir>/flows; the overview reads the collector's exporters.json and the
    # store, the same answer as `flows exporters --format json` and the Exporters page.
    data_dir = flow_dir(request).parent

    def job() -> Any:
        overview = exporters_overview(data_dir)
        if overview.collector is None and not overview.collector_missing:
            raise BadRequest(f"cannot read exporters.json: {overview.collector_problem}")
        return overview.to_json()

    return job


ENDPOINTS: list[Endpoint[Any]] = [
    Endpoint("/api/flows/top", "Top N values of one or more dimensions", TopParams, "Top", _top),
    Endpoint(
        "/api/flows/series",
        "Bits/s, packets/s and flows/s per time bucket, optionally per top value + other",
        SeriesParams,
        "Series",
        _series,
    ),
    Endpoint(
        "/api/flows/list",
        "Raw flows matching a filter, newest first",
        ListParams,
        "FlowList",
        _list,
    ),
    Endpoint(
        "/api/flows/interfaces",
        "Top interfaces by traffic, or one interface's in/out bits/s over time",
        InterfacesParams,
        "Interfaces",
        _interfaces,
    ),
    Endpoint("/api/flows/status", "What is stored, per table", NoParams, "Status", _status),
    Endpoint(
        "/api/flows/exporters",
        "Exporters: the collector's counters since its start and the stored totals of each",
        NoParams,
        "Exporters",
        _exporters,
    ),
]

# --- the OpenAPI document -------------------------------------------------------------------

INFO = {
    "title": "lanalyze flow reports and mail index",
    "version": "1",
    "description": "Top-N, time series, raw flows, interfaces and store status; the mail "
    "index's messages, rejections and counts. Flow times are those the collector received "
    "flows at (UTC); bytes and packets are scaled by sampling. An empty parameter is the same "
    "as an absent one.",
}

SCHEMAS: dict[str, Any] = {
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
    "Exporters": {
        "type": "object",
        "description": "The collector's exporters.json (format owned by the collector: "
        "`started_ms`, `written_ms`, `kernel_drops`... absent when no collector has run), "
        "with `exporters` merged with the store: each row has the collector's counters "
        "(`live` false and zeros for an exporter not heard from since the collector "
        "started; `version` is the counted number, 65541 for sFlow v5, and `protocol` its "
        "readable name: `NetFlow v5`, `NetFlow v9`, `IPFIX`, `sFlow 5`, empty when unknown) "
        "and `stored_bytes`, `stored_packets`, `stored_flows` (the whole store, per "
        "exporter address, as `top` by `exporter`), `stored_first_ms`/`stored_last_ms` and "
        "`stored_first`/`stored_last` (receive times, to the rollup bucket; null when "
        "nothing is stored). `stored.unread` says what could not be read.",
    },
}

OPENAPI = api.openapi(
    [*ENDPOINTS, *api_mail.ENDPOINTS, *api_alarms.ENDPOINTS],
    INFO,
    {**SCHEMAS, **api_mail.SCHEMAS, **api_alarms.SCHEMAS},
)


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(OPENAPI)


routes = [
    *(api.route(endpoint, METRICS, work_errors=(ValueError,)) for endpoint in ENDPOINTS),
    Route("/api/openapi.json", openapi_endpoint),
]
