"""The raw flow list: flows matching a filter, newest first."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanalyze.flows.errors import Replan
from lanalyze.flows.query import engine
from lanalyze.flows.query import interfaces as interface_names
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.query.dimensions import KeyExpr, format_flags, format_ip
from lanalyze.flows.query.planner import Piece
from lanalyze.flows.query.reports.common import check_limit, check_window, hour_name
from lanalyze.flows.query.sql import SUMS, Column
from lanalyze.flows.query.timespec import iso

LIST_COLUMNS = (
    "time_received",
    "time_start",
    "time_end",
    "exporter",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "protocol",
    "tcp_flags",
    "tos",
    "in_if",
    "out_if",
    "src_as",
    "dst_as",
    "sampling_rate",
)


@dataclass
class FlowRecord:
    """One stored flow; times in UTC ms, addresses as text, counters scaled by sampling."""

    time_received: int
    time_start: int
    time_end: int
    exporter: str
    src_addr: str
    dst_addr: str
    src_port: int
    dst_port: int
    tos: int
    in_if: int
    out_if: int
    src_as: int
    dst_as: int
    protocol: int
    flags: str
    sampling_rate: int
    bytes: int
    packets: int
    flows: int
    in_if_name: str | None = None
    out_if_name: str | None = None
    """Interface names from SNMP (None: not polled)."""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = dict(vars(self))
        for name in ("time_received", "time_start", "time_end"):
            record[name] = iso(record[name])
        return record


def list_flows(
    data: Path,
    *,
    since: int,
    until: int,
    filter: str | None = None,
    limit: int = 20,
) -> list[FlowRecord]:
    """Raw flows matching the filter, newest first, at most ``limit``; counters scaled.

    Files are read newest first in growing chunks until ``limit`` flows are found or the
    raw-scan budget (:func:`~lanalyze.flows.query.engine.apply_config`) is spent.
    """
    check_limit(limit, lowest=1)
    check_window(since, until)
    flt = compile_filter(filter)
    the_plan = engine.plan(data, since, until, frozenset({"@raw"}), use_rollups=False)
    if not the_plan.pieces:
        return []
    columns = [Column(name, KeyExpr(name)) for name in LIST_COLUMNS]
    columns += [*SUMS[:2], Column("nflows", KeyExpr("flows"))]
    ties = [column.name for column in columns[1:]]
    backend = engine.backend()
    if not backend.files:
        # A server (ClickHouse) orders and cuts the whole window itself.
        statement = backend.dialect.newest(
            backend.dialect.piece(the_plan.pieces[0], columns, flt, backend.shared_source),
            limit,
            ties,
        )
        rows = sorted(backend.execute(statement), key=_newest_first)
        return _annotate(data, [_flow_record(row) for row in rows[:limit]])
    files = the_plan.pieces[0].files
    # Newest files first, so a small limit reads a few recent files, not the whole window.
    files.sort(key=lambda path: Path(path).name.split("-", 1)[0], reverse=True)
    found: list[tuple[Any, ...]] = []
    step = 8
    start = 0
    scanned = 0

    def newest(chunk: list[str], lower: int) -> None:
        piece = Piece("raw", None, chunk, [(lower, until)])
        statement = backend.dialect.newest(
            backend.dialect.piece(piece, columns, flt, backend.shared_source), limit, ties
        )
        try:
            rows = backend.execute(statement)
        except Replan:
            rows = []
        found.extend(rows)

    # A rare match over a long window stops at the raw-scan budget with what it found.
    while start < len(files) and len(found) < limit and scanned <= engine.max_raw_bytes():
        chunk = files[start : start + step]
        start += step
        step *= 2
        for name in chunk:
            with contextlib.suppress(OSError):
                scanned += os.stat(name).st_size
        newest(chunk, since)
    found.sort(key=_newest_first)
    if len(found) >= limit and start < len(files):
        # A file's name gives its *first* row's time, not its newest: a compacted file, or
        # a batch of another writer, may hold newer flows than the files read so far. Only
        # files of the cutoff's hour or later can (every row of a file is in its hour), and
        # asking them for flows from the cutoff on lets DuckDB skip, by the Parquet
        # statistics, the row groups (and so the files) that hold none.
        cutoff = int(found[limit - 1][0])
        first_hour = hour_name(cutoff)
        rest = [f for f in files[start:] if Path(f).parent.name >= first_hour]
        if rest:
            newest(rest, max(since, cutoff))
            found.sort(key=_newest_first)
    return _annotate(data, [_flow_record(row) for row in found[:limit]])


def _newest_first(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The SQL order of :meth:`Dialect.newest`: time received descending, then the other
    columns ascending (addresses as bytes, as both servers compare them)."""
    return (-int(row[0]), *row[1:])


def _flow_record(row: tuple[Any, ...]) -> FlowRecord:
    values = dict(zip([*LIST_COLUMNS, "bytes", "packets", "flows"], row, strict=True))
    return FlowRecord(
        time_received=int(values["time_received"]),
        time_start=int(values["time_start"]),
        time_end=int(values["time_end"]),
        exporter=format_ip(values["exporter"]),
        src_addr=format_ip(values["src_addr"]),
        dst_addr=format_ip(values["dst_addr"]),
        src_port=int(values["src_port"]),
        dst_port=int(values["dst_port"]),
        tos=int(values["tos"]),
        in_if=int(values["in_if"]),
        out_if=int(values["out_if"]),
        src_as=int(values["src_as"]),
        dst_as=int(values["dst_as"]),
        protocol=int(values["protocol"]),
        flags=format_flags(int(values["tcp_flags"])),
        sampling_rate=int(values["sampling_rate"]),
        bytes=int(values["bytes"]),
        packets=int(values["packets"]),
        flows=int(values["flows"]),
    )


def _annotate(data: Path, records: list[FlowRecord]) -> list[FlowRecord]:
    known = interface_names.load(data)
    for record in records:
        record.in_if_name = interface_names.describe(known, record.exporter, record.in_if).name
        record.out_if_name = interface_names.describe(known, record.exporter, record.out_if).name
    return records
