"""Time series: rates per time bucket, optionally split by the top N values of a dimension."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanalyze.flows.errors import ReportError, TimeError
from lanalyze.flows.query import engine
from lanalyze.flows.query.compile import CompiledFilter, compile_filter
from lanalyze.flows.query.dimensions import Dimension, KeyExpr, parse_dimensions
from lanalyze.flows.query.reports.common import (
    MINUTE_MS,
    Sums,
    aggregate,
    check_order,
    check_window,
    describe,
    empty,
    plan_variants,
)
from lanalyze.flows.query.reports.top import top
from lanalyze.flows.query.sql import Column, Planned, key_names
from lanalyze.flows.query.timespec import auto_bucket, iso, parse_duration

MAX_BUCKETS = 10_000


@dataclass(frozen=True)
class SeriesPoint:
    time: int
    """Start of the bucket, UTC ms."""
    group: str
    bps: float
    pps: float
    fps: float
    bytes: int
    packets: int
    flows: int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": iso(self.time),
            "group": self.group,
            "bps": self.bps,
            "pps": self.pps,
            "fps": self.fps,
            "bytes": self.bytes,
            "packets": self.packets,
            "flows": self.flows,
        }


@dataclass
class SeriesReport:
    since: int
    until: int
    bucket_ms: int
    dimension: str | None
    groups: list[str]
    """Names of the breakdown groups (top values, then ``other``); [``total``] without one."""
    points: list[SeriesPoint]
    """One per (bucket, group) with traffic, in time order, groups in order within a bucket."""
    plan: str

    def to_json(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "bucket_seconds": self.bucket_ms // 1000,
            "dimension": self.dimension,
            "groups": self.groups,
            "plan": self.plan,
            "points": [point.to_json() for point in self.points],
        }


def bucket_column(bucket_ms: int) -> Column:
    return Column("bucket", KeyExpr("({t} - {t} % ?)", (bucket_ms,)))


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
    check_order(order)
    if not 1 <= top_n <= 50:
        raise ReportError("the number of series must be from 1 to 50")
    check_window(since, until)
    bucket_ms = parse_duration(bucket) if bucket else auto_bucket(since, until)
    if bucket_ms < 1000:
        raise TimeError("the bucket must be at least 1s")
    if (until - since) // bucket_ms > MAX_BUCKETS:
        raise ReportError(f"more than {MAX_BUCKETS} buckets: choose a larger bucket")
    # Whole buckets only, so rollup resolutions that divide the bucket can answer.
    since -= since % bucket_ms
    until = -(-until // bucket_ms) * bucket_ms
    flt = compile_filter(filter)
    dims = parse_dimensions(by) if by else []
    if len(dims) > 1:
        raise ReportError("a series is split by one dimension at most")
    finest = bucket_ms if bucket_ms % MINUTE_MS == 0 else None
    rollups = use_rollups and finest is not None
    head = [bucket_column(bucket_ms)]

    def run() -> SeriesReport:
        total_plan = plan_variants(
            data, since, until, [], flt, head=head, finest=finest, use_rollups=rollups
        )
        totals = _series_rows(total_plan, flt, [], None)
        if not dims:
            only = [_point(k[0], "total", s, bucket_ms) for k, s in sorted(totals.items())]
            return SeriesReport(
                since, until, bucket_ms, None, ["total"], only, describe(total_plan)
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
        names = [str(row.values[dim.name]) for row in ranking.rows]
        groups = [*names, "other"]
        planned = plan_variants(
            data, since, until, dims, flt, head=head, finest=finest, use_rollups=rollups
        )
        by_key = _series_rows(planned, flt, dims, ranking.keys)
        other: dict[int, list[int]] = {
            key[0]: [s.bytes, s.packets, s.flows] for key, s in totals.items()
        }
        if dim.either:
            # Each flow counts once per side: "other" is the rest of both sides' sums.
            collapsed = _series_rows(planned, flt, dims, None, collapse=True)
            other = {key[0]: [s.bytes, s.packets, s.flows] for key, s in collapsed.items()}
        # Points in rank order, by key: two keys may render alike (``appname``: one exported
        # name over several protocols and ports), and the backend returns rows unordered.
        per_bucket: dict[int, list[tuple[int, SeriesPoint]]] = {}
        for key, sums in by_key.items():
            time_ms, key_values = key[0], tuple(key[1:])
            index = ranking.keys.index(key_values)
            per_bucket.setdefault(time_ms, []).append(
                (index, _point(time_ms, names[index], sums, bucket_ms))
            )
            rest = other.setdefault(time_ms, [0, 0, 0])
            rest[0] -= sums.bytes
            rest[1] -= sums.packets
            rest[2] -= sums.flows
        points: list[SeriesPoint] = []
        for time_ms in sorted(set(per_bucket) | set(other)):
            points.extend(p for _, p in sorted(per_bucket.get(time_ms, []), key=lambda i: i[0]))
            if time_ms in other:
                points.append(_point(time_ms, "other", Sums(*other[time_ms]), bucket_ms))
        return SeriesReport(since, until, bucket_ms, dim.name, groups, points, describe(planned))

    return engine.with_replan(run)


def _series_rows(
    planned: Planned,
    flt: CompiledFilter,
    dims: list[Dimension],
    restrict: list[tuple[Any, ...]] | None,
    *,
    collapse: bool = False,
) -> dict[tuple[Any, ...], Sums]:
    """Sums per (bucket, keys); only the ``restrict`` keys; per bucket alone if ``collapse``."""
    if empty(planned) or restrict == []:
        return {}
    backend = engine.backend()
    statement = backend.dialect.restrict(
        aggregate(planned, flt, ["bucket"], dims), key_names(dims), restrict, collapse=collapse
    )
    width = 1 if collapse else 1 + sum(d.width for d in dims)
    return {
        tuple(row[:width]): Sums(int(row[-3]), int(row[-2]), int(row[-1]))
        for row in backend.execute(statement)
    }


def _point(time_ms: int, group: str, sums: Sums, bucket_ms: int) -> SeriesPoint:
    seconds = bucket_ms / 1000
    return SeriesPoint(
        time=int(time_ms),
        group=group,
        bps=sums.bytes * 8 / seconds,
        pps=sums.packets / seconds,
        fps=sums.flows / seconds,
        bytes=sums.bytes,
        packets=sums.packets,
        flows=sums.flows,
    )
