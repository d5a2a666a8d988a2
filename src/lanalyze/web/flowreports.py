"""The console's view of the flow reports: calls :mod:`lanalyze.flows.query.reports` and shapes
the answers for templates and charts.

This is deliberately not a query layer: every number comes from the same functions the CLI and
the JSON API (``/api/flows/...``) call, as typed values (times in UTC milliseconds, nothing
parsed back from text). What is added here is presentation only: chart series
as arrays of epoch milliseconds and bits/s, labels for table rows, drill-down keys, and the
filter error split into message, text and caret column for the page.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lanalyze.flows.errors import FilterError
from lanalyze.flows.query import reports
from lanalyze.flows.query.apps import PROTOCOL_NUMBERS, application, protocol_name
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.store import paths

T = TypeVar("T")
_APP_LABEL = re.compile(r"^([a-z0-9]+)/(\d+)(?: .*)?$")


@dataclass
class FilterProblem:
    message: str
    text: str
    column: int


@dataclass(frozen=True)
class Window:
    """What every report of a page shares: ``[since, until)`` in UTC ms and the filter."""

    since: int
    until: int
    filter: str


@dataclass
class TopRow:
    label: str
    bytes: int
    packets: int
    flows: int
    bps: float
    share: float
    parts: list[str] = field(default_factory=list)
    """The row's key split into drill-down values (the two hosts of a conversation)."""
    name: str = ""
    """Reverse DNS names of the label's addresses, when the view asks for names."""
    flag: str = ""
    """A country row's flag: the code as regional-indicator symbols (an emoji, no image)."""
    term: str = ""
    """A country or AS row's filter term for its drill-down link (``src country NL``); empty
    for the unknown row (no enrichment for those flows: nothing the filter could name)."""


class AnswerCache:
    """Recent answers by their full question, for a short time.

    Auto-refresh, going back from a drill-down and several people on the same dashboard ask
    the same question again; long ranges end on whole minutes or hours (see the flow pages),
    so their question stays the same until the next one. Late flows inside an already
    answered window show up after ``ttl`` seconds at most. Bounded in entries.
    """

    def __init__(self, ttl: float = 60.0, max_entries: int = 256) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(
        self, key: tuple[Any, ...], compute: Callable[[], T], ttl: float | None = None
    ) -> T:
        now = time.monotonic()
        ttl = self.ttl if ttl is None else ttl
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] < ttl:
                self._entries.move_to_end(key)
                value: T = hit[1]
                return value
        value = compute()
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = AnswerCache()
HOUR_TTL = 300.0
FIVE_MINUTE_TTL = 120.0


def _cached(name: str, compute: Callable[[], T], data_dir: Path, window: Window, *key: Any) -> T:
    # A window ending on a whole hour (or 5 minutes) is asked again until the next one; new
    # flows change only its last part, a little, so its answer may be a bit older.
    if window.until % 3_600_000 == 0:
        ttl: float | None = HOUR_TTL
    elif window.until % 300_000 == 0:
        ttl = FIVE_MINUTE_TTL
    else:
        ttl = None
    return CACHE.get_or_compute((name, data_dir, window, *key), compute, ttl)


def flow_dir(data_dir: Path) -> Path:
    return paths.flow_dir(data_dir)


def check_filter(text: str) -> FilterProblem | None:
    try:
        compile_filter(text)
    except FilterError as exc:
        return FilterProblem(exc.message, exc.text, exc.column)
    return None


def parse_app(label: str) -> tuple[int, int] | None:
    """``tcp/443 https`` -> (6, 443); None for port-less applications."""
    match = _APP_LABEL.match(label)
    if not match:
        return None
    proto = PROTOCOL_NUMBERS.get(match.group(1))
    if proto is None:
        proto = int(match.group(1)) if match.group(1).isdigit() else None
    if proto is None:
        return None
    return proto, int(match.group(2))


def app_label(proto: int, port: int) -> str:
    return application(proto, port)


def _top_report(
    kind: str, data_dir: Path, window: Window, by: str, *, order: str, limit: int
) -> reports.TopReport:
    """A top report of the window, through the answer cache (``kind`` keeps the plain and the
    country/AS tables apart in it)."""
    return _cached(
        kind,
        lambda: reports.top(
            flow_dir(data_dir),
            by,
            since=window.since,
            until=window.until,
            order=order,
            limit=limit,
            filter=window.filter,
        ),
        data_dir,
        window,
        by,
        order,
        limit,
    )


def top(data_dir: Path, window: Window, by: str, order: str, limit: int) -> list[TopRow]:
    report = _top_report("top", data_dir, window, by, order=order, limit=limit)
    name = report.dimensions[0]
    rows = []
    for row in report.rows:
        label = str(row.values[name])
        parts = label.split(" <-> ") if name in ("conversation", "conv") else [label]
        rows.append(
            TopRow(
                label=label,
                bytes=row.bytes,
                packets=row.packets,
                flows=row.flows,
                bps=row.bps,
                share=row.share,
                parts=parts,
            )
        )
    return rows


_COUNTRY = re.compile(r"^[A-Z]{2}$")
# Regional indicator symbol letter A: two of them make a flag in every emoji font, drawn by
# the browser from the text alone, so the console loads no image and contacts no one.
_INDICATOR_A = 0x1F1E6


def flag(code: str) -> str:
    """``NL`` -> the Dutch flag's two regional indicators; "" for anything not two letters."""
    code = code.upper()
    if not _COUNTRY.match(code):
        return ""
    return "".join(chr(_INDICATOR_A + ord(letter) - ord("A")) for letter in code)


# Country and AS tables: side -> the dimensions they ask for (a country; an AS number with its
# name, both from the same rollup of that side, see ``flows.store.layout``).
GEO_DIMENSIONS = {
    "country": {"src": "srccountry", "dst": "dstcountry"},
    "as": {"src": "srcas,srcasname", "dst": "dstas,dstasname"},
}


def geo(
    data_dir: Path, window: Window, kind: str, side: str, *, order: str, limit: int
) -> list[TopRow]:
    """Top countries (``kind = "country"``) or AS (``"as"``, labelled ``AS64500 Name``) of
    one side; flows without enrichment form one unknown row, with no link."""
    by = GEO_DIMENSIONS[kind][side]
    report = _top_report("geo", data_dir, window, by, order=order, limit=limit)
    first = report.dimensions[0]
    rows = []
    for row in report.rows:
        value = row.values[first]
        if kind == "country":
            code = str(value or "")
            label, term, mark = (
                code or "unknown",
                f"{side} country {code}" if code else "",
                flag(code),
            )
        else:
            number = int(value or 0)  # type: ignore[call-overload]
            name = str(row.values[report.dimensions[1]] or "")
            label = f"AS{number} {name}".rstrip() if number else (name or "unknown")
            term, mark = (f"{side} as {number}" if number else ""), ""
        rows.append(
            TopRow(
                label=label,
                bytes=row.bytes,
                packets=row.packets,
                flows=row.flows,
                bps=row.bps,
                share=row.share,
                flag=mark,
                term=term,
            )
        )
    return rows


def peers(data_dir: Path, window: Window, host: str, order: str, limit: int) -> list[TopRow]:
    """The hosts ``host`` talked with: its conversations, named by the other side."""
    rows = top(data_dir, window, "conversation", order, limit)
    for row in rows:
        others = [part for part in row.parts if part != host] or row.parts[:1]
        row.label = others[0]
        row.parts = [others[0]]
    return rows


def series(
    data_dir: Path, window: Window, by: str | None, top_n: int, *, bucket: str | None = None
) -> dict[str, Any]:
    """Chart data: ``{times, bucket_ms, unit, series: [{name, values, other}]}`` in bits/s."""
    report = _cached(
        "series",
        lambda: reports.series(
            flow_dir(data_dir),
            since=window.since,
            until=window.until,
            by=by,
            top_n=top_n,
            filter=window.filter,
            bucket=bucket,
        ),
        data_dir,
        window,
        by,
        top_n,
        bucket,
    )
    times = sorted({point.time for point in report.points})
    index = {t: i for i, t in enumerate(times)}
    values = {group: [0.0] * len(times) for group in report.groups}
    for point in report.points:
        values.setdefault(point.group, [0.0] * len(times))[index[point.time]] = point.bps
    series_list = [
        {"name": group, "values": values[group], "other": group == "other"}
        for group in report.groups
        if any(values[group])
    ]
    return {
        "times": times,
        "since": report.since,
        "until": report.until,
        "bucket_ms": report.bucket_ms,
        "unit": "b/s",
        "series": series_list,
    }


def interfaces(
    data_dir: Path,
    window: Window,
    limit: int,
    *,
    exporter: str | None = None,
    order: str = "bytes",
) -> list[dict[str, Any]]:
    """Interfaces by in + out ``order`` (all of one exporter's when ``exporter`` is given)."""
    rows = _cached(
        "interfaces",
        lambda: reports.top_interfaces(
            flow_dir(data_dir),
            since=window.since,
            until=window.until,
            order=order,
            limit=0 if exporter else limit,
            filter=window.filter,
        ),
        data_dir,
        window,
        0 if exporter else limit,
        order,
    )
    result = []
    for row in rows:
        if exporter is not None and row.exporter != exporter:
            continue
        result.append(
            {
                "exporter": row.exporter,
                "ifindex": row.interface,
                "name": row.name or "",
                "alias": row.alias or "",
                "speed_bps": row.speed_bps,
                "in_util_pct": row.in_util_pct,
                "out_util_pct": row.out_util_pct,
                "in_bps": row.in_bps,
                "out_bps": row.out_bps,
                "in_bytes": row.in_bytes,
                "out_bytes": row.out_bytes,
                "in_packets": row.in_packets,
                "out_packets": row.out_packets,
                "in_flows": row.in_flows,
                "out_flows": row.out_flows,
            }
        )
    return result


def interface_series(
    data_dir: Path, window: Window, exporter: str, ifindex: int, *, bucket: str | None = None
) -> dict[str, Any]:
    """In and out bits/s of one interface (the filter does not apply: it is the link's load)."""
    report = reports.interface_series(
        flow_dir(data_dir),
        exporter=exporter,
        interface=ifindex,
        since=window.since,
        until=window.until,
        bucket=bucket,
    )
    points = report.points
    return {
        "times": [p.time for p in points],
        "since": report.since,
        "until": report.until,
        "bucket_ms": report.bucket_ms,
        "unit": "b/s",
        "stacked": False,
        "interface_name": report.name or "",
        "interface_alias": report.alias or "",
        "speed_bps": report.speed_bps,
        "series": [
            {"name": "in", "values": [p.in_bps for p in points]},
            {"name": "out", "values": [p.out_bps for p in points]},
        ],
    }


def flows(data_dir: Path, window: Window, limit: int) -> list[dict[str, Any]]:
    rows = reports.list_flows(
        flow_dir(data_dir),
        since=window.since,
        until=window.until,
        filter=window.filter,
        limit=limit,
    )
    result = []
    for row in rows:
        result.append(
            {
                # One time axis: the charts bucket by receive time and the list is ordered by
                # it, so the table shows it; the exporter's own start time is a tooltip (a
                # replayed capture's flows started long before they were received).
                "received": row.time_received,
                "start": row.time_start,
                "duration_ms": max(0, row.time_end - row.time_start),
                "proto": protocol_name(row.protocol),
                "src": row.src_addr,
                "src_port": row.src_port,
                "dst": row.dst_addr,
                "dst_port": row.dst_port,
                "bytes": row.bytes,
                "packets": row.packets,
                "exporter": row.exporter,
                "in_if": row.in_if,
                "out_if": row.out_if,
                "flags": row.flags,
            }
        )
    return result


# Keys of the flow and interface rows that hold addresses, and where their names go.
_ADDRESS_KEYS = {"src": "src_name", "dst": "dst_name", "exporter": "exporter_name"}


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def addresses_of(results: dict[str, Any]) -> list[str]:
    """The addresses a page's answers show: top rows naming hosts (conversations: both),
    flow rows' source, destination and exporter, interface rows' exporter."""
    found: dict[str, None] = {}
    for value in results.values():
        if not isinstance(value, list):
            continue
        for row in value:
            if isinstance(row, TopRow):
                parts = row.parts or [row.label]
                if all(_is_address(part) for part in parts):
                    found.update(dict.fromkeys(parts))
            elif isinstance(row, dict):
                for key in _ADDRESS_KEYS:
                    if isinstance(row.get(key), str) and _is_address(row[key]):
                        found[row[key]] = None
    return list(found)


def with_names(results: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Copies of the answers with the names found (cached answers are shared: never changed)."""
    named: dict[str, Any] = {}
    for key, value in results.items():
        if not isinstance(value, list) or not names:
            named[key] = value
            continue
        named[key] = [_named_row(row, names) for row in value]
    return named


def _named_row(row: Any, names: dict[str, str]) -> Any:
    if isinstance(row, TopRow):
        parts = row.parts or [row.label]
        if any(part in names for part in parts):
            return dataclasses.replace(
                row, name=" <-> ".join(names.get(part, part) for part in parts)
            )
    elif isinstance(row, dict):
        extra = {
            name_key: names[row[key]]
            for key, name_key in _ADDRESS_KEYS.items()
            if isinstance(row.get(key), str) and row[key] in names
        }
        if extra:
            return {**row, **extra}
    return row
