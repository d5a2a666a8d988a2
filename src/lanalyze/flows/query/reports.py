"""The flow reports: top-N, time series, raw flow list, interface utilisation, store status.

Each report plans its files (:mod:`lanalyze.flows.query.planner`), builds one SQL statement
of ``UNION ALL`` pieces (rollup parts hold sums already scaled by sampling, raw flows are
scaled here), runs it in an in-process DuckDB over the Parquet files, and returns plain
Python values (dicts of ints and strings) that the CLI, the JSON API and the console render.

Times are those the collector received the flows at (``time_received``, UTC ms), like
Akvorado: that is what the rollups bucket, so rollup and raw answers are the same. Every
value from the user is a SQL parameter; the SQL text is built from fixed fragments only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from lanalyze.flows.config import QueryConfig
from lanalyze.flows.query import filtered
from lanalyze.flows.query import interfaces as interface_names
from lanalyze.flows.query.compile import CompiledFilter, compile_filter
from lanalyze.flows.query.dimensions import (
    Dimension,
    KeyExpr,
    format_flags,
    format_ip,
    parse_dimensions,
)
from lanalyze.flows.query.planner import Piece, Plan, plan
from lanalyze.flows.query.timespec import TimeError, auto_bucket, iso, parse_duration
from lanalyze.flows.store.layout import DERIVED_SQL, RESOLUTIONS, ROLLUP_TABLES

ORDERS = ("bytes", "packets", "flows")
MAX_ROWS = 100_000


class ReportError(ValueError):
    """A report request that cannot be answered as asked (bad order, limit, exporter...)."""


_local = threading.local()
_settings = {"query": QueryConfig()}


def apply_config(config: QueryConfig) -> None:
    """The ``[flows.query]`` section this process answers reports with: DuckDB threads per
    query (the machine is shared with the collector) and the raw bytes one report may scan.
    Applied by whoever answers reports (``flows/query/cli.py``, ``serve.py`` for the console);
    the section's defaults until then."""
    _settings["query"] = config


def _connection() -> duckdb.DuckDBPyConnection:
    # One in-memory connection per thread: DuckDB connections are not shared across threads.
    threads = _settings["query"].threads
    connection = getattr(_local, "connection", None)
    if connection is None or getattr(_local, "threads", None) != threads:
        # The object cache keeps Parquet footers between queries: a page's reports read the
        # same rollup parts, and parts are immutable under their final names.
        connection = duckdb.connect(
            ":memory:", config={"threads": threads, "enable_object_cache": True}
        )
        _local.connection = connection
        _local.threads = threads
    return connection


def _execute(sql: str, params: list[object]) -> list[tuple[Any, ...]]:
    try:
        return _connection().execute(sql, params).fetchall()
    except duckdb.IOException as exc:
        # A file left between planning and reading (compaction, retention): re-plan.
        raise _Replan(str(exc)) from None
    finally:
        _unregister_filtered()


class _Replan(Exception):
    pass


def _filtered_view(files: list[str], flt: CompiledFilter) -> str | None:
    """Register the filtered flows of ``files`` on this thread's connection (None: too many
    to keep, read the files instead); unregistered after the next :func:`_execute`."""
    connection = _connection()
    try:
        table = filtered.flows(connection, files, flt)
    except duckdb.IOException as exc:
        raise _Replan(str(exc)) from None
    if table is None:
        return None
    names: list[str] = _local.__dict__.setdefault("registered", [])
    name = f"filtered_flows_{len(names)}"
    connection.register(name, table)
    names.append(name)
    return name


def _unregister_filtered() -> None:
    names: list[str] = _local.__dict__.get("registered", [])
    connection = getattr(_local, "connection", None)
    while names:
        name = names.pop()
        if connection is not None:
            connection.unregister(name)


# --- SQL assembly ----------------------------------------------------------------------------


def _metrics(piece: Piece) -> dict[str, str]:
    if piece.source == "raw":
        return {
            "b": "(bytes * sampling_rate)",
            "p": "(packets * sampling_rate)",
            "f": "flows",
            "t": "time_received",
        }
    return {"b": "bytes", "p": "packets", "f": "flows", "t": "time"}


def _piece_sql(
    piece: Piece, selects: list[KeyExpr], flt: CompiledFilter
) -> tuple[str, list[object]]:
    names = _metrics(piece)
    params: list[object] = []
    columns = []
    for index, expr in enumerate(selects):
        columns.append(f"{expr.sql.format(**names)} AS c{index}")
        params.extend(expr.params)
    shared = None
    if piece.source == "raw" and not flt.is_true and filtered.covers(" ".join(columns)):
        shared = _filtered_view(piece.files, flt)
    if shared is not None:
        # The flows of these files that pass the filter, read once for all of a page's
        # reports (a drill-down's filter keeps few): see filtered.py.
        derived = ", ".join(f"{sql} AS {name}" for name, sql in DERIVED_SQL.items())
        source = f"(SELECT *, {derived} FROM {shared})"  # noqa: S608 (a generated name)
    elif piece.source == "raw":
        derived = ", ".join(f"{sql} AS {name}" for name, sql in DERIVED_SQL.items())
        source = f"(SELECT *, {derived} FROM read_parquet(?))"  # noqa: S608
        params.append(piece.files)
    else:
        source = "read_parquet(?)"
        params.append(piece.files)
    time_sql = " OR ".join(f"({names['t']} >= ? AND {names['t']} < ?)" for _ in piece.intervals)
    for lo, hi in piece.intervals:
        params.extend((lo, hi))
    if shared is not None:
        # Those rows passed the filter already (and may lack its columns).
        return f"SELECT {', '.join(columns)} FROM {source} WHERE ({time_sql})", params  # noqa: S608
    sql = f"SELECT {', '.join(columns)} FROM {source} WHERE ({time_sql}) AND {flt.sql}"  # noqa: S608
    params.extend(flt.params)
    return sql, params


Planned = list[tuple[Plan, list[KeyExpr]]]


def _check_raw_size(planned: Planned) -> None:
    """Refuse a report that would scan more raw flows than allowed (a per-flow filter such
    as ``bytes > 1M`` over weeks), instead of holding a worker thread for minutes."""
    limit = _settings["query"].max_raw_bytes
    files = {
        f for p, _ in planned for piece in p.pieces if piece.source == "raw" for f in piece.files
    }
    total = 0
    for name in files:
        with contextlib.suppress(OSError):
            total += os.stat(name).st_size
        if total > limit:
            raise ReportError(
                f"this report would scan more than {limit / 2**30:.0f} GiB of raw flows: "
                "narrow the time window, or drop per-flow filters (bytes, packets) and "
                "dimensions no rollup keeps"
            )


def _union(planned: Planned, flt: CompiledFilter) -> tuple[str, list[object]]:
    _check_raw_size(planned)
    parts: list[str] = []
    params: list[object] = []
    for the_plan, selects in planned:
        for piece in the_plan.pieces:
            sql, piece_params = _piece_sql(piece, selects, flt)
            parts.append(sql)
            params.extend(piece_params)
    return " UNION ALL ".join(parts), params


def _plan_variants(
    data: Path,
    since: int,
    until: int,
    dims: list[Dimension],
    flt: CompiledFilter,
    *,
    head: list[KeyExpr],
    finest: int | None = None,
    use_rollups: bool = True,
) -> Planned:
    """One plan per side of an either-side dimension (``ip`` reads the source-address rollup
    for the source side and the destination-address one for the other), else one plan."""
    planned: Planned = []
    for index, selects in enumerate(_variants(dims, _SUMS)):
        needs = set(flt.columns)
        for dim in dims:
            needs.update(dim.variant_needs(index))
        the_plan = plan(
            data, since, until, frozenset(needs), finest_bucket=finest, use_rollups=use_rollups
        )
        planned.append((the_plan, [*head, *selects]))
    return planned


def _describe(planned: Planned) -> str:
    return "; ".join(dict.fromkeys(p.describe() for p, _ in planned))


def _empty(planned: Planned) -> bool:
    return not any(p.pieces for p, _ in planned)


def _variants(dims: list[Dimension], tail: list[KeyExpr]) -> list[list[KeyExpr]]:
    count = max((len(d.bases) for d in dims), default=1)
    result = []
    for variant in range(count):
        selects: list[KeyExpr] = []
        for dim in dims:
            selects.extend(KeyExpr(column) for column in dim.variant_needs_ordered(variant))
        result.append(selects + tail)
    return result


def _aggregate(
    planned: Planned, flt: CompiledFilter, head_count: int, dims: list[Dimension]
) -> tuple[str, list[object], int]:
    """SQL giving ``k0..``, bytes, packets, flows summed per key, and the number of keys.

    First sums per exact stored values (head columns and the dimensions' base columns), then,
    if a dimension derives its keys (subnet, conversation), sums again per derived key, so
    the derivation runs once per distinct value.
    """
    union, union_params = _union(planned, flt)
    bases = head_count + sum(len(d.bases[0]) for d in dims)
    columns = ", ".join(f"c{i}" for i in range(bases))
    sums = f"sum(c{bases}) AS b, sum(c{bases + 1}) AS p, sum(c{bases + 2}) AS f"
    if bases:
        inner = f"SELECT {columns}, {sums} FROM ({union}) GROUP BY {columns}"  # noqa: S608
    else:
        inner = f"SELECT {sums} FROM ({union})"  # noqa: S608
    keys: list[str] = [f"c{i}" for i in range(head_count)]
    params: list[object] = []
    offset = head_count
    for dim in dims:
        names = [f"c{offset + i}" for i in range(len(dim.bases[0]))]
        for key in dim.keys:
            keys.append(key.sql.format(*names))
            params.extend(key.params)
        offset += len(names)
    selected = ", ".join(f"{key} AS k{i}" for i, key in enumerate(keys))
    selected = selected + ", " if selected else ""
    if all(d.identity for d in dims):
        sql = f"SELECT {selected}b AS bytes, p AS packets, f AS flows FROM ({inner})"  # noqa: S608
    else:
        sql = (
            f"SELECT {selected}sum(b) AS bytes, sum(p) AS packets, sum(f) AS flows "  # noqa: S608
            f"FROM ({inner}) GROUP BY ALL"
        )
    return sql, params + union_params, len(keys)


_SUMS = [KeyExpr("{b}"), KeyExpr("{p}"), KeyExpr("{f}")]


def _with_replan(run: Any) -> Any:
    for _ in range(2):
        try:
            return run()
        except _Replan:
            continue
    try:
        return run()
    except _Replan as exc:
        raise ReportError(f"the store changed while it was read, try again: {exc}") from None


# --- top -------------------------------------------------------------------------------------


@dataclass
class TopReport:
    """Rows of a top-N report; ``rows`` hold rendered dimension values and the counters."""

    dimensions: list[str]
    order: str
    since: int
    until: int
    rows: list[dict[str, Any]]
    total: dict[str, int]
    plan: str
    keys: list[tuple[Any, ...]] = field(default_factory=list, repr=False)
    """The stored (unrendered) key values of each row, for follow-up queries."""

    def to_json(self) -> dict[str, Any]:
        return {
            "dimensions": self.dimensions,
            "order": self.order,
            "since": iso(self.since),
            "until": iso(self.until),
            "total": self.total,
            "plan": self.plan,
            "rows": self.rows,
        }


def top(
    data: Path,
    by: str,
    *,
    since: int,
    until: int,
    order: str = "bytes",
    limit: int = 10,
    filter: str | None = None,
    use_rollups: bool = True,
) -> TopReport:
    """The top ``limit`` values (0: all) of the ``by`` dimensions over ``[since, until)``.

    Raises FilterError, DimensionError, ReportError (all ValueError) on a bad request.
    """
    if order not in ORDERS:
        raise ReportError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if not 0 <= limit <= MAX_ROWS:
        raise ReportError(f"limit must be from 0 (all) to {MAX_ROWS}")
    if until <= since:
        raise TimeError("the end of the window must be after its start")
    dims = parse_dimensions(by)
    flt = compile_filter(filter)

    def run() -> TopReport:
        planned = _plan_variants(data, since, until, dims, flt, head=[], use_rollups=use_rollups)
        seconds = max((until - since) / 1000, 1e-3)
        if _empty(planned):
            return TopReport(
                [d.name for d in dims], order, since, until, [], _zero(), _describe(planned)
            )
        aggregated, params, width = _aggregate(planned, flt, 0, dims)
        keys = ", ".join(f"k{i}" for i in range(width))
        order_column = {"bytes": "bytes", "packets": "packets", "flows": "flows"}[order]
        sql = (
            "SELECT *, sum(bytes) OVER (), sum(packets) OVER (), sum(flows) OVER () "  # noqa: S608
            f"FROM ({aggregated}) ORDER BY {order_column} DESC, {keys}"
        )
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        result = _execute(sql, params)
        total = _zero()
        if result:
            total = {
                "bytes": int(result[0][-3]),
                "packets": int(result[0][-2]),
                "flows": int(result[0][-1]),
            }
        if any(d.either for d in dims):
            total = _total(data, since, until, flt, use_rollups)
        rows = []
        key_values = []
        for row in result:
            values: dict[str, Any] = {}
            offset = 0
            for dim in dims:
                values[dim.name] = dim.render(tuple(row[offset : offset + dim.width]))
                offset += dim.width
            nbytes, npackets, nflows = int(row[width]), int(row[width + 1]), int(row[width + 2])
            values.update(
                bytes=nbytes,
                packets=npackets,
                flows=nflows,
                bps=nbytes * 8 / seconds,
                pps=npackets / seconds,
                share=100.0
                * {"bytes": nbytes, "packets": npackets, "flows": nflows}[order]
                / max(total[order], 1),
            )
            rows.append(values)
            key_values.append(tuple(row[:width]))
        return TopReport(
            [d.name for d in dims],
            order,
            since,
            until,
            rows,
            total,
            _describe(planned),
            key_values,
        )

    result: TopReport = _with_replan(run)
    return result


def _zero() -> dict[str, int]:
    return {"bytes": 0, "packets": 0, "flows": 0}


def _total(
    data: Path, since: int, until: int, flt: CompiledFilter, use_rollups: bool
) -> dict[str, int]:
    planned = _plan_variants(data, since, until, [], flt, head=[], use_rollups=use_rollups)
    if _empty(planned):
        return _zero()
    sql, params, _ = _aggregate(planned, flt, 0, [])
    row = _execute(sql, params)[0]
    return {"bytes": int(row[0] or 0), "packets": int(row[1] or 0), "flows": int(row[2] or 0)}


# --- series ----------------------------------------------------------------------------------


@dataclass
class SeriesReport:
    since: int
    until: int
    bucket_ms: int
    dimension: str | None
    groups: list[str]
    """Names of the breakdown groups (top values, then ``other``); [``total``] without one."""
    points: list[dict[str, Any]]
    """One per (bucket, group): time, group, bps, pps, fps, bytes, packets, flows."""
    plan: str

    def to_json(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "bucket_seconds": self.bucket_ms // 1000,
            "dimension": self.dimension,
            "groups": self.groups,
            "plan": self.plan,
            "points": self.points,
        }


def series(
    data: Path,
    *,
    since: int,
    until: int,
    bucket: str | None = None,
    by: str | None = None,
    top_n: int = 5,
    order: str = "bytes",
    filter: str | None = None,
    use_rollups: bool = True,
) -> SeriesReport:
    """Rates per time bucket over the window, optionally split by the top N of a dimension."""
    if order not in ORDERS:
        raise ReportError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if not 1 <= top_n <= 50:
        raise ReportError("the number of series must be from 1 to 50")
    if until <= since:
        raise TimeError("the end of the window must be after its start")
    bucket_ms = parse_duration(bucket) if bucket else auto_bucket(since, until)
    if bucket_ms < 1000:
        raise TimeError("the bucket must be at least 1s")
    if (until - since) // bucket_ms > 10_000:
        raise ReportError("more than 10000 buckets: choose a larger bucket")
    # Whole buckets only, so rollup resolutions that divide the bucket can answer.
    since -= since % bucket_ms
    until = -(-until // bucket_ms) * bucket_ms
    flt = compile_filter(filter)
    dims = parse_dimensions(by) if by else []
    if len(dims) > 1:
        raise ReportError("a series is split by one dimension at most")
    finest = bucket_ms if bucket_ms % RESOLUTIONS["1m"] == 0 else None

    def run() -> SeriesReport:
        rollups = use_rollups and finest is not None
        bucket_expr = KeyExpr("({t} - {t} % ?)", (bucket_ms,))
        total_plan = _plan_variants(
            data, since, until, [], flt, head=[bucket_expr], finest=finest, use_rollups=rollups
        )
        totals = _series_rows(total_plan, flt, [], None)
        groups = ["total"]
        points: list[dict[str, Any]] = []
        if not dims:
            for key, sums in sorted(totals.items()):
                points.append(_point(key[0], "total", sums, bucket_ms))
            return SeriesReport(
                since, until, bucket_ms, None, groups, points, _describe(total_plan)
            )
        dim = dims[0]
        ranking = top(
            data,
            dim.name,
            since=since,
            until=until,
            order=order,
            limit=top_n,
            filter=filter,
            use_rollups=use_rollups,
        )
        names = [str(row[dim.name]) for row in ranking.rows]
        groups = [*names, "other"]
        planned = _plan_variants(
            data, since, until, dims, flt, head=[bucket_expr], finest=finest, use_rollups=rollups
        )
        by_key = _series_rows(planned, flt, dims, ranking.keys)
        other: dict[int, list[int]] = {key[0]: list(sums) for key, sums in totals.items()}
        if dim.either:
            # Each flow counts once per side: "other" is the rest of both sides' sums.
            other = {}
            for key, sums in _series_rows(planned, flt, dims, None, collapse=True).items():
                other[key[0]] = list(sums)
        per_bucket: dict[int, list[dict[str, Any]]] = {}
        for key, sums in by_key.items():
            time_ms, key_values = key[0], tuple(key[1:])
            index = ranking.keys.index(key_values)
            per_bucket.setdefault(time_ms, []).append(
                _point(time_ms, names[index], sums, bucket_ms)
            )
            rest = other.setdefault(time_ms, [0, 0, 0])
            for i in range(3):
                rest[i] -= sums[i]
        for time_ms in sorted(set(per_bucket) | set(other)):
            points.extend(
                sorted(per_bucket.get(time_ms, []), key=lambda p: groups.index(p["group"]))
            )
            if time_ms in other:
                points.append(_point(time_ms, "other", tuple(other[time_ms]), bucket_ms))
        return SeriesReport(since, until, bucket_ms, dim.name, groups, points, _describe(planned))

    result: SeriesReport = _with_replan(run)
    return result


def _series_rows(
    planned: Planned,
    flt: CompiledFilter,
    dims: list[Dimension],
    restrict: list[tuple[Any, ...]] | None,
    *,
    collapse: bool = False,
) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    """Sums per (bucket, keys); only the ``restrict`` keys; per bucket alone if ``collapse``."""
    if _empty(planned) or restrict == []:
        return {}
    aggregated, params, width = _aggregate(planned, flt, 1, dims)
    where = "TRUE"
    if restrict:
        conditions = []
        for values in restrict:
            conditions.append("(" + " AND ".join(f"k{i + 1} = ?" for i in range(width - 1)) + ")")
            params.extend(values)
        where = " OR ".join(conditions)
    if collapse:
        sql = (
            "SELECT k0, sum(bytes), sum(packets), sum(flows) "  # noqa: S608
            f"FROM ({aggregated}) WHERE {where} GROUP BY k0"
        )
        width = 1
    else:
        sql = f"SELECT * FROM ({aggregated}) WHERE {where}"  # noqa: S608
    return {
        tuple(row[:width]): (int(row[-3]), int(row[-2]), int(row[-1]))
        for row in _execute(sql, params)
    }


def _point(time_ms: int, group: str, sums: tuple[int, ...], bucket_ms: int) -> dict[str, Any]:
    seconds = bucket_ms / 1000
    return {
        "time": iso(int(time_ms)),
        "group": group,
        "bps": sums[0] * 8 / seconds,
        "pps": sums[1] / seconds,
        "fps": sums[2] / seconds,
        "bytes": sums[0],
        "packets": sums[1],
        "flows": sums[2],
    }


# --- list ------------------------------------------------------------------------------------

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


def list_flows(
    data: Path,
    *,
    since: int,
    until: int,
    filter: str | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Raw flows matching the filter, newest first, at most ``limit``; counters scaled.

    Files are read newest first in growing chunks until ``limit`` flows are found or the
    raw-scan budget (:func:`configure`) is spent.
    """
    if not 1 <= limit <= MAX_ROWS:
        raise ReportError(f"limit must be from 1 to {MAX_ROWS}")
    if until <= since:
        raise TimeError("the end of the window must be after its start")
    flt = compile_filter(filter)
    the_plan = plan(data, since, until, frozenset({"@raw"}), use_rollups=False)
    if not the_plan.pieces:
        return []
    files = the_plan.pieces[0].files
    # Newest files first, so a small limit reads a few recent files, not the whole window.
    files.sort(key=lambda path: Path(path).name.split("-", 1)[0], reverse=True)
    found: list[dict[str, Any]] = []
    step = 8
    start = 0
    scanned = 0
    # A rare match over a long window stops at the raw-scan budget with what it found.
    while start < len(files) and len(found) < limit and scanned <= _settings["query"].max_raw_bytes:
        chunk = files[start : start + step]
        start += step
        step *= 2
        for name in chunk:
            with contextlib.suppress(OSError):
                scanned += os.stat(name).st_size
        piece = Piece("raw", None, chunk, [(since, until)])
        selects = [KeyExpr(column) for column in LIST_COLUMNS]
        selects += [KeyExpr("{b}"), KeyExpr("{p}"), KeyExpr("flows")]
        sql, params = _piece_sql(piece, selects, flt)
        sql += " ORDER BY c0 DESC LIMIT ?"
        params.append(limit)
        try:
            rows = _execute(sql, params)
        except _Replan:
            rows = []
        found.extend(_flow_record(row) for row in rows)
    found.sort(key=lambda r: r["time_received_ms"], reverse=True)
    return interface_names.annotate_flows(data, found[:limit])


def _flow_record(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip([*LIST_COLUMNS, "bytes", "packets", "flows"], row, strict=True))
    record: dict[str, Any] = {"time_received_ms": int(values["time_received"])}
    for name in ("time_received", "time_start", "time_end"):
        record[name] = iso(int(values[name]))
    for name in ("exporter", "src_addr", "dst_addr"):
        record[name] = format_ip(values[name])
    for name in ("src_port", "dst_port", "tos", "in_if", "out_if", "src_as", "dst_as"):
        record[name] = int(values[name])
    record["protocol"] = int(values["protocol"])
    record["flags"] = format_flags(int(values["tcp_flags"]))
    record["sampling_rate"] = int(values["sampling_rate"])
    record["bytes"] = int(values["bytes"])
    record["packets"] = int(values["packets"])
    record["flows"] = int(values["flows"])
    return record


# --- interfaces ------------------------------------------------------------------------------


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
) -> list[dict[str, Any]]:
    """Interfaces by traffic: exporter, ifIndex, and in and out bytes, packets, flows and
    average bits/s, ranked by in + out of ``order`` (bytes, packets or flows)."""
    if order not in ORDERS:
        raise ReportError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    if not 0 <= limit <= MAX_ROWS:
        raise ReportError(f"limit must be from 0 (all) to {MAX_ROWS}")
    flt = compile_filter(filter)
    needs = frozenset({"exporter", "in_if", "out_if"} | flt.columns)

    def run() -> list[dict[str, Any]]:
        the_plan = plan(data, since, until, needs, use_rollups=use_rollups)
        if not the_plan.pieces:
            return []
        # c2..c7: in bytes, out bytes, in packets, out packets, in flows, out flows; a flow
        # counts in on its input interface and out on its output one.
        zero, counters = KeyExpr("0"), (KeyExpr("{b}"), KeyExpr("{p}"), KeyExpr("{f}"))
        variants = [
            [KeyExpr("exporter"), KeyExpr("in_if"), *(e for c in counters for e in (c, zero))],
            [KeyExpr("exporter"), KeyExpr("out_if"), *(e for c in counters for e in (zero, c))],
        ]
        union, params = _union([(the_plan, v) for v in variants], flt)
        rank = {"bytes": "ib + ob", "packets": "ip + op", "flows": "if_ + of_"}[order]
        sql = (
            "SELECT c0, c1, sum(c2) AS ib, sum(c3) AS ob, sum(c4) AS ip, sum(c5) AS op, "  # noqa: S608
            f"sum(c6) AS if_, sum(c7) AS of_ FROM ({union}) "
            f"GROUP BY c0, c1 ORDER BY {rank} DESC, c0, c1"
        )
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        seconds = max((until - since) / 1000, 1e-3)
        return [
            {
                "exporter": format_ip(row[0]),
                "interface": int(row[1]),
                "in_bytes": int(row[2]),
                "out_bytes": int(row[3]),
                "in_bps": int(row[2]) * 8 / seconds,
                "out_bps": int(row[3]) * 8 / seconds,
                "in_packets": int(row[4]),
                "out_packets": int(row[5]),
                "in_flows": int(row[6]),
                "out_flows": int(row[7]),
            }
            for row in _execute(sql, params)
        ]

    result: list[dict[str, Any]] = _with_replan(run)
    return interface_names.annotate_rows(data, result)


def interface_series(
    data: Path,
    *,
    exporter: str,
    interface: int,
    since: int,
    until: int,
    bucket: str | None = None,
    use_rollups: bool = True,
) -> dict[str, Any]:
    """In and out bits/s of one exporter's interface per time bucket."""
    if not 0 <= interface <= 2**32 - 1:
        raise ReportError("interface must be an ifIndex from 0 to 4294967295")
    address = _exporter_bytes(exporter)
    bucket_ms = parse_duration(bucket) if bucket else auto_bucket(since, until)
    since -= since % bucket_ms
    until = -(-until // bucket_ms) * bucket_ms
    flt = compile_filter(None)
    finest = bucket_ms if bucket_ms % RESOLUTIONS["1m"] == 0 else None

    def run() -> dict[str, Any]:
        needs = frozenset({"exporter", "in_if", "out_if"})
        the_plan = plan(
            data,
            since,
            until,
            needs,
            finest_bucket=finest,
            use_rollups=use_rollups and bool(finest),
        )
        points: list[dict[str, Any]] = []
        if the_plan.pieces:
            selects = [
                KeyExpr("({t} - {t} % ?)", (bucket_ms,)),
                KeyExpr(
                    "CASE WHEN exporter = ? AND in_if = ? THEN {b} ELSE 0 END", (address, interface)
                ),
                KeyExpr(
                    "CASE WHEN exporter = ? AND out_if = ? THEN {b} ELSE 0 END",
                    (address, interface),
                ),
            ]
            union, params = _union([(the_plan, selects)], flt)
            sql = f"SELECT c0, sum(c1), sum(c2) FROM ({union}) GROUP BY c0 ORDER BY c0"  # noqa: S608
            seconds = bucket_ms / 1000
            for row in _execute(sql, params):
                points.append(
                    {
                        "time": iso(int(row[0])),
                        "in_bps": int(row[1]) * 8 / seconds,
                        "out_bps": int(row[2]) * 8 / seconds,
                    }
                )
        return {
            "exporter": exporter,
            "interface": interface,
            "since": iso(since),
            "until": iso(until),
            "bucket_seconds": bucket_ms // 1000,
            "points": points,
        }

    result: dict[str, Any] = _with_replan(run)
    return interface_names.annotate_series(data, result)


# --- status ----------------------------------------------------------------------------------


def status(data: Path) -> list[dict[str, Any]]:
    """Per stored table: files, rows, bytes on disk and the time range held."""
    from lanalyze.flows.store.layout import list_raw_files, list_raw_hours, read_manifest
    from lanalyze.flows.store.paths import part_path, raw_dir

    tables: list[dict[str, Any]] = []
    raw_files = [
        str(raw_dir(data) / hour / name)
        for hour in list_raw_hours(data)
        for name in list_raw_files(data, hour)
    ]
    tables.append(_table_status("raw", raw_files, "time_received"))
    manifest = read_manifest(data)
    for resolution in RESOLUTIONS:
        for table in ROLLUP_TABLES:
            keyed = manifest.parts.get(resolution, {}).get(table.name, {})
            files = [
                str(part_path(data, resolution, table.name, key, name))
                for key, names in keyed.items()
                for name in names
            ]
            tables.append(_table_status(f"{resolution}/{table.name}", files, "time"))
    return tables


def _table_status(name: str, files: list[str], time_column: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "table": name,
        "files": len(files),
        "rows": 0,
        "bytes": 0,
        "first": None,
        "last": None,
    }
    existing = [f for f in files if Path(f).exists()]
    if not existing:
        return entry
    entry["bytes"] = sum(Path(f).stat().st_size for f in existing)
    try:
        rows = (
            _connection()
            .execute(
                "SELECT sum(row_group_num_rows), min(TRY_CAST(stats_min_value AS UBIGINT)), "
                "max(TRY_CAST(stats_max_value AS UBIGINT)) FROM parquet_metadata(?) "
                "WHERE path_in_schema = ?",
                [existing, time_column],
            )
            .fetchall()
        )
    except duckdb.IOException:
        return entry
    if rows and rows[0][0] is not None:
        entry["rows"] = int(rows[0][0])
        entry["first"] = iso(int(rows[0][1])) if rows[0][1] is not None else None
        entry["last"] = iso(int(rows[0][2])) if rows[0][2] is not None else None
    return entry
