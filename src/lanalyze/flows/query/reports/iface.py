"""Interface reports: top interfaces by traffic, and one interface's bits/s over time.

Interfaces are (exporter, ifIndex); a flow counts in on its input interface and out on its
output one. Names and speeds come from SNMP (:mod:`lanalyze.flows.query.interfaces`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanalyze.flows.errors import ReportError
from lanalyze.flows.query import engine
from lanalyze.flows.query import interfaces as interface_names
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.query.dimensions import KeyExpr, format_ip
from lanalyze.flows.query.reports.common import (
    MINUTE_MS,
    check_limit,
    check_order,
    check_window,
    seconds,
    union,
)
from lanalyze.flows.query.reports.series import bucket_column
from lanalyze.flows.query.sql import Column
from lanalyze.flows.query.timespec import auto_bucket, iso, parse_duration


@dataclass
class InterfaceRow:
    exporter: str
    interface: int
    in_bytes: int
    out_bytes: int
    in_bps: float
    out_bps: float
    in_packets: int
    out_packets: int
    in_flows: int
    out_flows: int
    name: str | None = None
    alias: str | None = None
    description: str | None = None
    speed_bps: int | None = None
    in_util_pct: float | None = None
    out_util_pct: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class InterfacePoint:
    time: int
    """Start of the bucket, UTC ms."""
    in_bps: float
    out_bps: float
    in_util_pct: float | None = None
    out_util_pct: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "time": iso(self.time)}


@dataclass
class InterfaceSeries:
    exporter: str
    interface: int
    since: int
    until: int
    bucket_ms: int
    points: list[InterfacePoint] = field(default_factory=list)
    name: str | None = None
    alias: str | None = None
    description: str | None = None
    speed_bps: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "exporter": self.exporter,
            "interface": self.interface,
            "since": iso(self.since),
            "until": iso(self.until),
            "bucket_seconds": self.bucket_ms // 1000,
            "points": [point.to_json() for point in self.points],
            "name": self.name,
            "alias": self.alias,
            "description": self.description,
            "speed_bps": self.speed_bps,
        }


def _exporter_bytes(text: str) -> bytes:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ReportError(f"exporter must be an IP address, not {text!r}") from None
    if address.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    return address.packed


def top_interfaces(
    data: Path,
    *,
    since: int,
    until: int,
    order: str = "bytes",
    limit: int = 10,
    filter: str | None = None,
    use_rollups: bool = True,
) -> list[InterfaceRow]:
    """Interfaces by traffic: exporter, ifIndex, and in and out bytes, packets, flows and
    average bits/s, ranked by in + out of ``order`` (bytes, packets or flows)."""
    check_order(order)
    check_limit(limit)
    check_window(since, until)
    flt = compile_filter(filter)
    needs = frozenset({"exporter", "in_if", "out_if"} | flt.columns)
    window = seconds(since, until)
    zero = KeyExpr("0")
    sums = {"bytes": KeyExpr("{b}"), "packets": KeyExpr("{p}"), "flows": KeyExpr("{f}")}

    def side(if_column: str, inbound: bool) -> list[Column]:
        columns = [Column("exporter", KeyExpr("exporter")), Column("if_index", KeyExpr(if_column))]
        for counter, expr in sums.items():
            columns.append(Column(f"in_{counter}", expr if inbound else zero))
            columns.append(Column(f"out_{counter}", zero if inbound else expr))
        return columns

    def run() -> list[InterfaceRow]:
        the_plan = engine.plan(data, since, until, needs, use_rollups=use_rollups)
        if not the_plan.pieces:
            return []
        planned = [(the_plan, side("in_if", True)), (the_plan, side("out_if", False))]
        backend = engine.backend()
        statement = backend.dialect.interfaces(union(planned, flt), order, limit)
        return [
            InterfaceRow(
                exporter=format_ip(row[0]),
                interface=int(row[1]),
                in_bytes=int(row[2]),
                out_bytes=int(row[3]),
                in_bps=int(row[2]) * 8 / window,
                out_bps=int(row[3]) * 8 / window,
                in_packets=int(row[4]),
                out_packets=int(row[5]),
                in_flows=int(row[6]),
                out_flows=int(row[7]),
            )
            for row in backend.execute(statement)
        ]

    rows = engine.with_replan(run)
    known = interface_names.load(data)
    for row in rows:
        info = interface_names.describe(known, row.exporter, row.interface)
        row.name, row.alias, row.description = info.name, info.alias, info.description
        row.speed_bps = info.speed_bps
        row.in_util_pct = interface_names.percent(row.in_bps, info.speed_bps)
        row.out_util_pct = interface_names.percent(row.out_bps, info.speed_bps)
    return rows


def interface_series(
    data: Path,
    *,
    exporter: str,
    interface: int,
    since: int,
    until: int,
    bucket: str | None = None,
    use_rollups: bool = True,
) -> InterfaceSeries:
    """In and out bits/s of one exporter's interface per time bucket."""
    if not 0 <= interface <= 2**32 - 1:
        raise ReportError("interface must be an ifIndex from 0 to 4294967295")
    address = _exporter_bytes(exporter)
    check_window(since, until)
    bucket_ms = parse_duration(bucket) if bucket else auto_bucket(since, until)
    since -= since % bucket_ms
    until = -(-until // bucket_ms) * bucket_ms
    flt = compile_filter(None)
    finest = bucket_ms if bucket_ms % MINUTE_MS == 0 else None
    match = (address, interface)
    columns = [
        bucket_column(bucket_ms),
        Column(
            "in_bytes", KeyExpr("CASE WHEN exporter = ? AND in_if = ? THEN {b} ELSE 0 END", match)
        ),
        Column(
            "out_bytes", KeyExpr("CASE WHEN exporter = ? AND out_if = ? THEN {b} ELSE 0 END", match)
        ),
    ]

    def run() -> list[InterfacePoint]:
        needs = frozenset({"exporter", "in_if", "out_if"})
        the_plan = engine.plan(
            data,
            since,
            until,
            needs,
            finest_bucket=finest,
            use_rollups=use_rollups and bool(finest),
        )
        if not the_plan.pieces:
            return []
        backend = engine.backend()
        statement = backend.dialect.interface_series(union([(the_plan, columns)], flt))
        width = bucket_ms / 1000
        return [
            InterfacePoint(int(row[0]), int(row[1]) * 8 / width, int(row[2]) * 8 / width)
            for row in backend.execute(statement)
        ]

    points = engine.with_replan(run)
    # Named as the rows name exporters: IPv4 (also when mapped) as a dotted quad.
    parsed = ipaddress.ip_address(exporter)
    info = interface_names.describe(
        interface_names.load(data), str(getattr(parsed, "ipv4_mapped", None) or parsed), interface
    )
    return InterfaceSeries(
        exporter,
        interface,
        since,
        until,
        bucket_ms,
        [
            InterfacePoint(
                p.time,
                p.in_bps,
                p.out_bps,
                interface_names.percent(p.in_bps, info.speed_bps),
                interface_names.percent(p.out_bps, info.speed_bps),
            )
            for p in points
        ],
        info.name,
        info.alias,
        info.description,
        info.speed_bps,
    )
