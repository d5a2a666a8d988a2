"""What the reports share: request checks, sums, planning per either-side variant.

The store layout (``layout``: resolutions, rollup tables, file lists) is imported here and
in :mod:`~lanalyze.flows.query.sql` only, so the reports follow it when it moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lanalyze.flows.errors import ReportError, TimeError
from lanalyze.flows.query import engine
from lanalyze.flows.query.compile import CompiledFilter
from lanalyze.flows.query.dimensions import Dimension
from lanalyze.flows.query.sql import SUMS, Column, Planned, Statement, base_columns
from lanalyze.flows.query.timespec import MIN_MS
from lanalyze.flows.store.layout import (
    RESOLUTIONS,
    ROLLUP_TABLES,
    hour_name,
    list_raw_files,
    list_raw_hours,
    read_manifest,
)
from lanalyze.flows.store.paths import part_path, raw_dir

__all__ = [
    "MINUTE_MS",
    "RESOLUTIONS",
    "ROLLUP_TABLES",
    "hour_name",
    "list_raw_files",
    "list_raw_hours",
    "part_path",
    "raw_dir",
    "read_manifest",
]

ORDERS = ("bytes", "packets", "flows")
MAX_ROWS = 100_000
MINUTE_MS = RESOLUTIONS["1m"]


@dataclass(frozen=True)
class Sums:
    """Bytes and packets (scaled by sampling) and flows."""

    bytes: int = 0
    packets: int = 0
    flows: int = 0

    def of(self, order: str) -> int:
        return {"bytes": self.bytes, "packets": self.packets, "flows": self.flows}[order]

    def to_json(self) -> dict[str, int]:
        return {"bytes": self.bytes, "packets": self.packets, "flows": self.flows}


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ReportError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")


def check_limit(limit: int, lowest: int = 0) -> None:
    if not lowest <= limit <= MAX_ROWS:
        if lowest == 0:
            raise ReportError(f"limit must be from 0 (all) to {MAX_ROWS}")
        raise ReportError(f"limit must be from {lowest} to {MAX_ROWS}")


def check_window(since: int, until: int) -> None:
    if until <= since:
        raise TimeError("the end of the window must be after its start")
    if since < MIN_MS:
        raise TimeError("the window starts before 1970 (flows carry UNIX times)")


def plan_variants(
    data: Path,
    since: int,
    until: int,
    dims: list[Dimension],
    flt: CompiledFilter,
    *,
    head: list[Column],
    finest: int | None = None,
    use_rollups: bool = True,
) -> Planned:
    """One plan per side of an either-side dimension (``ip`` reads the source-address rollup
    for the source side and the destination-address one for the other), else one plan."""
    planned: Planned = []
    count = max((len(d.bases) for d in dims), default=1)
    for variant in range(count):
        needs = set(flt.columns)
        for dim in dims:
            needs.update(dim.variant_needs(variant))
        the_plan = engine.plan(
            data, since, until, frozenset(needs), finest_bucket=finest, use_rollups=use_rollups
        )
        planned.append((the_plan, [*head, *base_columns(dims, variant), *SUMS]))
    return planned


def describe(planned: Planned) -> str:
    return "; ".join(dict.fromkeys(p.describe() for p, _ in planned))


def empty(planned: Planned) -> bool:
    return not any(p.pieces for p, _ in planned)


def aggregate(
    planned: Planned, flt: CompiledFilter, head: list[str], dims: list[Dimension]
) -> Statement:
    """The backend's statement summing ``planned`` per head column and dimension key."""
    engine.check_raw_size([p for p, _ in planned])
    backend = engine.backend()
    return backend.dialect.aggregate(planned, flt, backend.shared_source, head, dims)


def union(planned: Planned, flt: CompiledFilter) -> Statement:
    engine.check_raw_size([p for p, _ in planned])
    backend = engine.backend()
    return backend.dialect.union(planned, flt, backend.shared_source)


def seconds(since: int, until: int) -> float:
    return max((until - since) / 1000, 1e-3)
