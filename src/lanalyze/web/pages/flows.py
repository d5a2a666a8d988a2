"""Flow pages: the dashboard and the drill-downs (host, application, conversation, interface).

Every page reads the same query parameters, so a drill-down link keeps the time range and the
filter: ``range`` (``5m`` ... ``30d`` or ``custom`` with ``from``/``to``), ``filter`` (the CLI's
filter language), ``order`` (``bytes``, ``packets``, ``flows``) and ``refresh`` (seconds).
The numbers come from the reports layer (:mod:`lanalyze.web.flowreports` adapts it); the
queries of one page run one after the other in a worker thread (DuckDB parallelises each one;
see ``_gather``), so DuckDB never blocks the event loop.

Trust: path and query parameters are the user's. Addresses and numbers in paths are parsed
and re-printed before they enter a filter; the user's filter text is checked on its own first
(so the caret points into what they typed) and then combined with the page's own condition.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lanalyze.flows.errors import ReportError
from lanalyze.flows.query import names
from lanalyze.flows.query.apps import PROTOCOL_NUMBERS
from lanalyze.flows.query.reports import ORDERS
from lanalyze.web import flowreports
from lanalyze.web.flowreports import FilterProblem
from lanalyze.web.templating import render

T = TypeVar("T")

RANGES: dict[str, tuple[str, int]] = {
    "5m": ("Last 5 minutes", 5 * 60),
    "15m": ("Last 15 minutes", 15 * 60),
    "1h": ("Last hour", 3600),
    "6h": ("Last 6 hours", 6 * 3600),
    "24h": ("Last 24 hours", 86400),
    "7d": ("Last 7 days", 7 * 86400),
    "30d": ("Last 30 days", 30 * 86400),
}
DEFAULT_RANGE = "1h"
ALIGN_MS = {"24h": 300_000, "7d": 3_600_000, "30d": 3_600_000}
# Chart buckets the rollups hold whole (None: the reports layer picks one for the range).
SERIES_BUCKET = {"7d": "1h", "30d": "1d"}
# Reports only raw flows can answer (no rollup keeps address pairs): beyond this span they load
# after the page, so the rest of it is usable at once.
LAZY_AFTER_MS = 6 * 3_600_000
REFRESH = {"0": "Off", "30": "30 s", "60": "1 min", "300": "5 min"}
TOP_N = 10
FLOW_LIMIT = 50
GEO_N = 8
# The country and AS tables of the dashboard and the host page: name -> (kind, side).
GEO_TABLES = {
    "src_countries": ("country", "src"),
    "dst_countries": ("country", "dst"),
    "src_ases": ("as", "src"),
    "dst_ases": ("as", "dst"),
}


@dataclass
class View:
    """What the user asked for: range, filter, order, refresh (all from the URL)."""

    range: str
    since_ms: int
    until_ms: int
    custom_from: str
    custom_to: str
    filter: str
    order: str
    refresh: str
    problem: FilterProblem | None = None
    notes: list[str] = field(default_factory=list)
    names: bool = False
    """Show reverse DNS names of addresses (``names=1``)."""

    def query(self, **changes: str) -> str:
        params = {"range": self.range, "filter": self.filter, "order": self.order}
        if self.range == "custom":
            params.update({"from": self.custom_from, "to": self.custom_to})
        if self.refresh != "0":
            params["refresh"] = self.refresh
        if self.names:
            params["names"] = "1"
        params.update(changes)
        return urlencode({k: v for k, v in params.items() if v})

    def link(self, path: str, **changes: str) -> str:
        query = self.query(**changes)
        return f"{path}?{query}" if query else path

    @property
    def bucket(self) -> str | None:
        return SERIES_BUCKET.get(self.range)

    @property
    def heavy_is_lazy(self) -> bool:
        return self.until_ms - self.since_ms > LAZY_AFTER_MS

    @property
    def span_label(self) -> str:
        if self.range in RANGES:
            return RANGES[self.range][0]
        return f"{format_utc_minute(self.since_ms)} – {format_utc_minute(self.until_ms)} UTC"


def format_utc_minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def parse_utc_minute(text: str) -> int | None:
    for pattern in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text.strip(), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        return int(moment.timestamp() * 1000)
    return None


def parse_view(request: Request, now_ms: int | None = None) -> View:
    return view_from(request.query_params, now_ms)


def view_from(params: Mapping[str, str], now_ms: int | None = None) -> View:
    """The view a page's query string asks for (also used to warm the answer cache)."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    choice = params.get("range", DEFAULT_RANGE)
    notes: list[str] = []
    custom_from = params.get("from", "")[:32]
    custom_to = params.get("to", "")[:32]
    if choice == "custom":
        since = parse_utc_minute(custom_from)
        until = parse_utc_minute(custom_to) if custom_to else now_ms
        if since is None or until is None or since >= until:
            notes.append(
                "The custom range needs a start before its end (UTC); showing the last hour."
            )
            choice = DEFAULT_RANGE
        else:
            until = min(until, now_ms)
            return View(
                choice,
                since,
                until,
                custom_from,
                custom_to,
                _filter(params),
                _order(params),
                _refresh(params),
                notes=notes,
                names=params.get("names") == "1",
            )
    if choice not in RANGES:
        choice = DEFAULT_RANGE
    seconds = RANGES[choice][1]
    # Long ranges end on a whole 5 minutes (a day) or hour (a week or more), like the
    # intervals of Scrutinizer's long reports: the rollups answer them without touching raw
    # flows, and the same window (and its cached answer) holds until the next boundary.
    align = ALIGN_MS.get(choice, 1)
    until = now_ms - now_ms % align
    since = until - seconds * 1000
    return View(
        choice,
        since,
        until,
        custom_from or format_utc_minute(since),
        custom_to or format_utc_minute(until),
        _filter(params),
        _order(params),
        _refresh(params),
        notes=notes,
        names=params.get("names") == "1",
    )


def _filter(params: Any) -> str:
    return str(params.get("filter", "")).strip()[:4096]


def _order(params: Any) -> str:
    order = str(params.get("order", "bytes"))
    return order if order in ORDERS else "bytes"


def _refresh(params: Any) -> str:
    value = str(params.get("refresh", "0"))
    return value if value in REFRESH else "0"


def _combine(user: str, own: str) -> str:
    if not user:
        return own
    if not own:
        return user
    return f"({user}) and ({own})"


# DuckDB parallelises each query itself; running a page's reports side by side on a small
# machine only makes them fight for the cores (measured: 7 at once took 3x longer than one
# after the other), so a page runs its reports in sequence, in one thread, and at most two
# pages query at the same time.
_QUERY_SLOTS = threading.BoundedSemaphore(2)


async def _gather(calls: dict[str, Callable[[], T]]) -> dict[str, T]:
    def run_all() -> dict[str, T]:
        with _QUERY_SLOTS:
            return {name: call() for name, call in calls.items()}

    return await asyncio.to_thread(run_all)


async def _named(results: dict[str, Any]) -> dict[str, Any]:
    """The answers with reverse DNS names, found within ``flows.query.names.budget``."""
    resolver = names.shared()
    found = await resolver.lookup_async(flowreports.addresses_of(results), resolver.config.budget)
    return flowreports.with_names(results, found)


def _page_filter(view: View, own: str) -> str | None:
    """The filter the queries run with, or None when the user's filter is malformed.

    The page's own condition is built from path values we parsed, but it is checked too: a
    value the filter language cannot say (anything ``_address`` let through by mistake) is a
    404 for that path, never an unhandled error in the query threads.
    """
    view.problem = flowreports.check_filter(view.filter)
    if view.problem is not None:
        return None
    own_problem = flowreports.check_filter(own) if own else None
    if own_problem is not None:
        raise HTTPException(404, f"no flow report for this path: {own_problem.message}")
    return _combine(view.filter, own)


def _context(request: Request, view: View, **values: Any) -> dict[str, Any]:
    return {
        "view": view,
        "ranges": RANGES,
        "orders": ORDERS,
        "refresh_choices": REFRESH,
        "links": Links(view),
        **values,
    }


class Links:
    """Drill-down URLs that keep the current range, filter and order."""

    def __init__(self, view: View) -> None:
        self.view = view

    def host(self, address: str) -> str:
        return self.view.link(f"/flows/host/{quote(address, safe='')}")

    def app(self, label: str) -> str | None:
        parsed = flowreports.parse_app(label)
        if parsed is None:
            return None
        proto, port = parsed
        return self.view.link(f"/flows/app/{proto}/{port}")

    def conversation(self, a: str, b: str) -> str:
        return self.view.link(f"/flows/conversation/{quote(a, safe='')}/{quote(b, safe='')}")

    def interface(self, exporter: str, ifindex: int | str) -> str:
        return self.view.link(f"/flows/interface/{quote(exporter, safe='')}/{ifindex}")

    def exporter(self, exporter: str) -> str:
        return self.view.link(f"/flows/exporter/{quote(exporter, safe='')}")

    def page(self, **changes: str) -> str:
        return self.view.link(self.view_path, **changes)

    def where(self, term: str) -> str:
        """This page narrowed to ``term`` (``src country NL``) on top of the user's filter."""
        return self.view.link(self.view_path, filter=_combine(self.view.filter, term))

    def panel(self, name: str) -> str:
        return self.view.link(self.view_path, panel=name)

    view_path = "/"


# Panels a page may defer: the query's name -> (title, first column heading, link kind).
PANELS = {
    "conversations": ("Top conversations", "Conversation", "conversation"),
    "peers": ("Peers", "Peer address", "host"),
    # Four small tables from the rollups, but four more queries: beyond 6 hours they come
    # after the page too, so it is usable without waiting for them (issue 19).
    "geo": ("Countries and AS", "", "geo"),
}


async def _run_page(
    request: Request,
    template: str,
    own_filter: str,
    queries: Callable[[View, str], dict[str, Callable[[], Any]]],
    **values: Any,
) -> Response:
    view = parse_view(request)
    started = time.perf_counter()
    combined = _page_filter(view, own_filter)
    results: dict[str, Any] = {}
    panel = request.query_params.get("panel", "")
    lazy = view.heavy_is_lazy and request.query_params.get("full") != "1"
    if combined is not None:
        calls = queries(view, combined)
        if panel in calls and panel in PANELS:
            return await _panel(request, view, panel, calls[panel])
        deferred = {name for name in calls if name in PANELS} if lazy else set()
        results = dict.fromkeys(deferred)
        try:
            results.update(await _gather({k: v for k, v in calls.items() if k not in deferred}))
        except ReportError as exc:
            view.notes.append(str(exc))
        if view.names:
            results = await _named(results)
    context = _context(request, view, **values, **results)
    context["links"].view_path = request.url.path
    context["query_ms"] = round((time.perf_counter() - started) * 1000)
    status = 400 if view.problem is not None else 200
    return render(request, template, context, status_code=status)


async def _panel(request: Request, view: View, name: str, call: Callable[[], Any]) -> Response:
    """One deferred table alone, for the page's script to put in place."""
    started = time.perf_counter()
    try:
        rows = (await _gather({name: call}))[name]
    except ReportError as exc:
        view.notes.append(str(exc))
        rows = []
    if view.names:
        rows = (await _named({name: rows}))[name]
    title, heading, kind = PANELS[name]
    context = _context(
        request, view, rows=rows, panel=name, title=title, heading=heading, kind=kind
    )
    context["links"].view_path = request.url.path
    context["query_ms"] = round((time.perf_counter() - started) * 1000)
    return render(request, "geo_panel.html" if name == "geo" else "panel.html", context)


def dashboard_queries(data_dir: Path, view: View, flt: str) -> dict[str, Callable[[], Any]]:
    window = flowreports.Window(view.since_ms, view.until_ms, flt)
    return {
        "series": lambda: flowreports.series(data_dir, window, "app", 8, bucket=view.bucket),
        "talkers": lambda: flowreports.top(data_dir, window, "src_addr", view.order, TOP_N),
        "destinations": lambda: flowreports.top(data_dir, window, "dst_addr", view.order, TOP_N),
        "apps": lambda: flowreports.top(data_dir, window, "app", view.order, TOP_N),
        "conversations": lambda: flowreports.top(
            data_dir, window, "conversation", view.order, TOP_N
        ),
        "exporters": lambda: flowreports.top(data_dir, window, "exporter", view.order, TOP_N),
        "interfaces": lambda: flowreports.interfaces(data_dir, window, TOP_N, order=view.order),
        "geo": lambda: geo_tables(data_dir, view, window),
    }


def geo_tables(data_dir: Path, view: View, window: flowreports.Window) -> dict[str, Any]:
    """The country and AS tables (answered by the ``src_geo`` / ``dst_geo`` rollups), one
    panel: whether the flows carry any country or AS shows only across all four."""
    return {
        name: flowreports.geo(data_dir, window, kind, side, order=view.order, limit=GEO_N)
        for name, (kind, side) in GEO_TABLES.items()
    }


async def dashboard(request: Request) -> Response:
    data_dir = request.app.state.console.data_dir
    return await _run_page(
        request,
        "dashboard.html",
        "",
        lambda view, flt: dashboard_queries(data_dir, view, flt),
        title="Flows",
    )


def warm_dashboards(data_dir: Path, ranges: list[str]) -> int:
    """Answer the unfiltered dashboard of each range now, so a first visit finds it cached.

    Deferred (raw-only) tables are left out: they load after the page anyway. Blocking: run it
    in a thread. Returns the number of reports computed.
    """
    done = 0
    for choice in ranges:
        view = view_from({"range": choice})
        calls = dashboard_queries(data_dir, view, "")
        with _QUERY_SLOTS:
            for name, call in calls.items():
                if name not in PANELS:
                    call()
                    done += 1
    return done


def _address(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise HTTPException(404, f"{text!r} is not an IP address") from None
    # Flow records carry no IPv6 zone (``fe80::1%eth0``), and the filter language has no
    # syntax for one: such a path names no host we could have seen.
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise HTTPException(404, f"{text!r}: flows carry no IPv6 zone") from None
    return str(address)


async def host_page(request: Request) -> Response:
    data_dir = request.app.state.console.data_dir
    address = _address(request.path_params["address"])

    def queries(view: View, flt: str) -> dict[str, Callable[[], Any]]:
        window = flowreports.Window(view.since_ms, view.until_ms, flt)
        return {
            "series": lambda: flowreports.series(data_dir, window, "app", 6, bucket=view.bucket),
            "peers": lambda: flowreports.peers(data_dir, window, address, view.order, 20),
            "apps": lambda: flowreports.top(data_dir, window, "app", view.order, TOP_N),
            "flows": lambda: flowreports.flows(data_dir, window, FLOW_LIMIT),
            "geo": lambda: geo_tables(data_dir, view, window),
        }

    return await _run_page(
        request,
        "drill.html",
        f"host {address}",
        queries,
        title=f"Host {address}",
        kind="host",
        subject=address,
    )


async def app_page(request: Request) -> Response:
    data_dir = request.app.state.console.data_dir
    proto_text = str(request.path_params["proto"])
    proto = PROTOCOL_NUMBERS.get(proto_text)
    if proto is None:
        if not proto_text.isdigit() or int(proto_text) > 255:
            raise HTTPException(404, "unknown protocol")
        proto = int(proto_text)
    port = int(request.path_params["port"])
    if port > 65535:
        raise HTTPException(404, "no such port")
    label = flowreports.app_label(proto, port)
    own = f"proto {proto} and port {port}" if proto in (6, 17, 132) else f"proto {proto}"

    def queries(view: View, flt: str) -> dict[str, Callable[[], Any]]:
        window = flowreports.Window(view.since_ms, view.until_ms, flt)
        return {
            "series": lambda: flowreports.series(
                data_dir, window, "src_addr", 6, bucket=view.bucket
            ),
            "talkers": lambda: flowreports.top(data_dir, window, "src_addr", view.order, TOP_N),
            "destinations": lambda: flowreports.top(
                data_dir, window, "dst_addr", view.order, TOP_N
            ),
            "conversations": lambda: flowreports.top(
                data_dir, window, "conversation", view.order, TOP_N
            ),
            "flows": lambda: flowreports.flows(data_dir, window, FLOW_LIMIT),
        }

    return await _run_page(
        request,
        "drill.html",
        own,
        queries,
        title=f"Application {label}",
        kind="app",
        subject=label,
    )


async def conversation_page(request: Request) -> Response:
    data_dir = request.app.state.console.data_dir
    a = _address(request.path_params["a"])
    b = _address(request.path_params["b"])
    own = f"(src host {a} and dst host {b}) or (src host {b} and dst host {a})"

    def queries(view: View, flt: str) -> dict[str, Callable[[], Any]]:
        window = flowreports.Window(view.since_ms, view.until_ms, flt)
        return {
            "series": lambda: flowreports.series(data_dir, window, "app", 6, bucket=view.bucket),
            "apps": lambda: flowreports.top(data_dir, window, "app", view.order, TOP_N),
            "flows": lambda: flowreports.flows(data_dir, window, FLOW_LIMIT),
        }

    return await _run_page(
        request,
        "drill.html",
        own,
        queries,
        title=f"Conversation {a} ⇄ {b}",
        kind="conversation",
        subject=f"{a} ⇄ {b}",
        hosts=(a, b),
    )


async def interface_page(request: Request) -> Response:
    data_dir = request.app.state.console.data_dir
    exporter = _address(request.path_params["exporter"])
    ifindex = int(request.path_params["ifindex"])
    # An ifIndex is only an interface together with its router: the same number is another
    # port on every exporter.
    own = f"router ip {exporter} and if {ifindex}"

    def queries(view: View, flt: str) -> dict[str, Callable[[], Any]]:
        window = flowreports.Window(view.since_ms, view.until_ms, flt)
        return {
            "utilisation": lambda: flowreports.interface_series(
                data_dir, window, exporter, ifindex, bucket=view.bucket
            ),
            "peers_by_ip": lambda: flowreports.top(data_dir, window, "ip", view.order, TOP_N),
            "apps": lambda: flowreports.top(data_dir, window, "app", view.order, TOP_N),
            "flows": lambda: flowreports.flows(data_dir, window, FLOW_LIMIT),
        }

    return await _run_page(
        request,
        "drill.html",
        own,
        queries,
        title=f"Interface {ifindex} on {exporter}",
        kind="interface",
        subject=f"{exporter} if {ifindex}",
        exporter=exporter,
        ifindex=ifindex,
    )


async def exporter_page(request: Request) -> Response:
    data_dir = request.app.state.console.data_dir
    exporter = _address(request.path_params["exporter"])

    def queries(view: View, flt: str) -> dict[str, Callable[[], Any]]:
        window = flowreports.Window(view.since_ms, view.until_ms, flt)
        return {
            "interfaces": lambda: flowreports.interfaces(
                data_dir, window, 0, exporter=exporter, order=view.order
            ),
        }

    return await _run_page(
        request,
        "exporter.html",
        f"router ip {exporter}",
        queries,
        title=f"Exporter {exporter}",
        exporter=exporter,
    )


routes = [
    Route("/", dashboard),
    Route("/flows", dashboard),
    Route("/flows/host/{address}", host_page),
    Route("/flows/app/{proto}/{port:int}", app_page),
    Route("/flows/conversation/{a}/{b}", conversation_page),
    Route("/flows/interface/{exporter}/{ifindex:int}", interface_page),
    Route("/flows/exporter/{exporter}", exporter_page),
]
