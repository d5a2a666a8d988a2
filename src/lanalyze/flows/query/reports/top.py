"""Top-N: the values of one or more dimensions with the most bytes, packets or flows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanalyze.flows.query import engine
from lanalyze.flows.query.compile import CompiledFilter, compile_filter
from lanalyze.flows.query.dimensions import parse_dimensions
from lanalyze.flows.query.reports.common import (
    Sums,
    aggregate,
    check_limit,
    check_order,
    check_window,
    describe,
    empty,
    plan_variants,
    seconds,
)
from lanalyze.flows.query.sql import key_names
from lanalyze.flows.query.timespec import iso


@dataclass(frozen=True)
class TopRow:
    values: dict[str, object]
    """Rendered value of each dimension, by the dimension's name as asked (``srcip``)."""
    bytes: int
    packets: int
    flows: int
    bps: float
    pps: float
    share: float
    """Percent of the total of the report's order."""

    def to_json(self) -> dict[str, Any]:
        return {
            **self.values,
            "bytes": self.bytes,
            "packets": self.packets,
            "flows": self.flows,
            "bps": self.bps,
            "pps": self.pps,
            "share": self.share,
        }


@dataclass
class TopReport:
    dimensions: list[str]
    order: str
    since: int
    until: int
    rows: list[TopRow]
    total: Sums
    plan: str
    keys: list[tuple[Any, ...]] = field(default_factory=list, repr=False)
    """The stored (unrendered) key values of each row, for follow-up queries."""

    def to_json(self) -> dict[str, Any]:
        return {
            "dimensions": self.dimensions,
            "order": self.order,
            "since": iso(self.since),
            "until": iso(self.until),
            "total": self.total.to_json(),
            "plan": self.plan,
            "rows": [row.to_json() for row in self.rows],
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

    Raises FilterError, DimensionError, ReportError (all ReportInputError) on a bad request.
    """
    check_order(order)
    check_limit(limit)
    check_window(since, until)
    dims = parse_dimensions(by)
    flt = compile_filter(filter)
    names = [d.name for d in dims]
    keys = key_names(dims)
    window = seconds(since, until)

    def run() -> TopReport:
        planned = plan_variants(data, since, until, dims, flt, head=[], use_rollups=use_rollups)
        if empty(planned):
            return TopReport(names, order, since, until, [], Sums(), describe(planned))
        backend = engine.backend()
        statement = backend.dialect.top(aggregate(planned, flt, [], dims), keys, order, limit)
        result = backend.execute(statement)
        total = Sums()
        if result:
            total = Sums(*(int(v) for v in result[0][-3:]))
        if any(d.either for d in dims):
            total = _total(data, since, until, flt, use_rollups)
        width = len(keys)
        rows = []
        for row in result:
            values: dict[str, object] = {}
            offset = 0
            for dim in dims:
                values[dim.name] = dim.render(tuple(row[offset : offset + dim.width]))
                offset += dim.width
            sums = Sums(int(row[width]), int(row[width + 1]), int(row[width + 2]))
            rows.append(
                TopRow(
                    values,
                    sums.bytes,
                    sums.packets,
                    sums.flows,
                    bps=sums.bytes * 8 / window,
                    pps=sums.packets / window,
                    share=100.0 * sums.of(order) / max(total.of(order), 1),
                )
            )
        return TopReport(
            names,
            order,
            since,
            until,
            rows,
            total,
            describe(planned),
            [tuple(row[:width]) for row in result],
        )

    return engine.with_replan(run)


def _total(data: Path, since: int, until: int, flt: CompiledFilter, use_rollups: bool) -> Sums:
    """Each flow once (an either-side top counts it once per side)."""
    planned = plan_variants(data, since, until, [], flt, head=[], use_rollups=use_rollups)
    if empty(planned):
        return Sums()
    row = engine.execute(aggregate(planned, flt, [], []))[0]
    return Sums(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))
