"""Which files answer a report: the coarsest rollup that can, raw flows for the rest.

A report needs some columns (its dimensions and its filter's) over ``[since, until)``. The
planner takes the first rollup table (:data:`~lanalyze.flows.store.layout.ROLLUP_TABLES`)
holding them all, then covers the window greedily: whole days from the ``1d`` parts, whole
hours from ``1h``, whole minutes from ``1m``, and what is left (the sub-minute edges, and
hours no rollup has yet) from raw flows. Raw files the rollups do not cover yet (the last
seconds) are read over the rolled-up part of the window too, so every flow counts exactly once.
A filter on per-flow counters (``bytes > 1M``) or a dimension no table keeps means raw flows.

The work is bounded by what is stored, not by the window: the window is cut to the weeks the
store holds data in, and the rollup parts are found by walking the manifest's keys (sorted,
bisected), never the window hour by hour. Input: the window is the user's (already parsed
into 1970 .. 9999 by :mod:`~lanalyze.flows.query.timespec`); the manifest and listings are ours.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from lanalyze.flows.store.layout import (
    HOUR_MS,
    RESOLUTIONS,
    ROLLUP_TABLES,
    WEEK_MS,
    Manifest,
    RollupTable,
    block_of,
    hour_name,
    hour_start,
    key_end,
    key_span,
    key_start,
    list_raw_files_cached,
    list_raw_hours,
    read_manifest_shared,
)
from lanalyze.flows.store.paths import part_path, raw_dir

Interval = tuple[int, int]


@dataclass
class Piece:
    """Files of one kind, and the time intervals to read from them."""

    source: str  # "raw" or a resolution ("1m", "1h", "6h", "1d", "1w")
    table: RollupTable | None
    files: list[str]
    intervals: list[Interval]

    @property
    def time_column(self) -> str:
        return "time_received" if self.source == "raw" else "time"


@dataclass
class Plan:
    pieces: list[Piece] = field(default_factory=list)
    table: RollupTable | None = None

    def describe(self) -> str:
        parts = [
            f"{p.source}{'/' + p.table.name if p.table else ''}:{len(p.files)} files"
            for p in self.pieces
        ]
        return ", ".join(parts) or "no data"


def choose_table(needs: frozenset[str]) -> RollupTable | None:
    if "@raw" in needs:
        return None
    for table in ROLLUP_TABLES:
        if needs <= set(table.columns):
            return table
    return None


def _floor(value: int, step: int) -> int:
    return value - value % step


def _ceil(value: int, step: int) -> int:
    return -(-value // step) * step


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        elif lo < hi:
            merged.append((lo, hi))
    return merged


def _subtract(intervals: list[Interval], used: list[Interval]) -> list[Interval]:
    result = []
    for lo, hi in intervals:
        cursor = lo
        for u_lo, u_hi in used:
            if u_hi <= cursor or u_lo >= hi:
                continue
            if u_lo > cursor:
                result.append((cursor, u_lo))
            cursor = max(cursor, u_hi)
        if cursor < hi:
            result.append((cursor, hi))
    return result


def _overlaps(hour: int, intervals: list[Interval]) -> bool:
    return any(lo < hour + HOUR_MS and hour < hi for lo, hi in intervals)


def _complete_before(manifest: Manifest, bucket: int, until: int) -> bool:
    latest = manifest.latest.get(hour_name(bucket))
    return latest is not None and latest < until


def _held(manifest: Manifest, table: RollupTable | None, hours: list[str]) -> Interval | None:
    """The time span the store holds anything in for ``table`` (and raw flows); None: empty."""
    starts: list[int] = []
    ends: list[int] = []
    if hours:
        starts.append(hour_start(hours[0]))
        ends.append(hour_start(hours[-1]) + HOUR_MS)
    if table is not None:
        for resolution in RESOLUTIONS:
            keys = manifest.parts.get(resolution, {}).get(table.name, {})
            if keys:
                starts.append(min(key_start(resolution, key) for key in keys))
                ends.append(max(key_end(resolution, key) for key in keys))
    if not starts:
        return None
    return min(starts), max(ends)


def _clamp(since: int, until: int, held: Interval | None) -> Interval:
    """``[since, until)`` cut to whole weeks around what is stored (weeks are multiples of
    every resolution, so the cut moves no rollup boundary): nothing outside holds a flow,
    and the plan then costs the same for ``-30d`` and ``-10000d``."""
    if held is None:
        return since, since
    return max(since, _floor(held[0], WEEK_MS)), min(until, _ceil(held[1], WEEK_MS))


def plan(
    data: Path,
    since: int,
    until: int,
    needs: frozenset[str],
    *,
    finest_bucket: int | None = None,
    use_rollups: bool = True,
) -> Plan:
    """The pieces that answer a report needing ``needs`` over ``[since, until)``.

    ``finest_bucket`` (series) allows only rollups whose resolution divides it.
    """
    manifest = read_manifest_shared(data) if use_rollups else Manifest()
    # Listing after reading the manifest: files the manifest covers are all listed.
    # Every flow of a segment lies in its directory's hour (the store contract).
    first_hour = hour_name(max(since, 0))
    last_hour = hour_name(max(until, 0))
    hours_held = list_raw_hours(data)
    hours = [h for h in hours_held if first_hour <= h <= last_hour]
    raw_files: list[tuple[str, str]] = []
    for hour in hours:
        raw_files.extend((hour, name) for name in list_raw_files_cached(data, hour))
    raw_files = [(h, n) for h, n in raw_files if int(n.split("-", 1)[0] or 0) < until]

    def raw_paths(files: list[tuple[str, str]], within: list[Interval] | None = None) -> list[str]:
        if within is not None:
            files = [(h, n) for h, n in files if _overlaps(hour_start(h), within)]
        return [str(raw_dir(data) / h / n) for h, n in files]

    table = choose_table(needs) if use_rollups else None
    result = Plan(table=table)
    since, until = _clamp(since, until, _held(manifest, table, hours_held))
    if since >= until:
        return result
    if table is None:
        if raw_files:
            result.pieces.append(Piece("raw", None, raw_paths(raw_files), [(since, until)]))
        return result

    remaining: list[Interval] = [(since, until)]
    rolled: list[Interval] = []
    for resolution in ("1w", "1d", "6h", "1h", "1m"):
        step = RESOLUTIONS[resolution]
        if finest_bucket is not None and finest_bucket % step != 0:
            continue
        available = manifest.parts.get(resolution, {}).get(table.name, {})
        if not available:
            continue
        span = key_span(resolution)
        used: list[Interval] = []
        files: list[str] = []
        # Walk the parts that exist, not the window's hours or days: the work depends on
        # what is stored, not on how far back the window reaches (``-10000d``).
        keys = sorted((key_start(resolution, key), key) for key in available)
        for lo, hi in remaining:
            a, b = _ceil(lo, step), _floor(hi, step)
            if resolution in ("1h", "1m") and b < hi and _complete_before(manifest, b, hi):
                # The bucket holding ``hi`` has no flow at or after ``hi`` (a window ending
                # "now"): the rollup answers it whole, no raw scan of the open hour.
                b = hi
            if a >= b:
                continue
            first = bisect.bisect_left(keys, (_floor(a, span), ""))
            for start, key in itertools.islice(keys, first, None):
                if start >= b:
                    break
                if resolution in ("6h", "1w"):
                    # Blocks of a day (weeks) are built one by one as they close: check each.
                    for name in available[key]:
                        block = block_of(name)
                        inside = start <= block < start + span and a <= block <= b - step
                        if inside and block % step == 0:
                            used.append((block, block + step))
                            files.append(str(part_path(data, resolution, table.name, key, name)))
                    continue
                sub = (max(a, start), min(b, start + span))
                if sub[0] < sub[1]:
                    used.append(sub)
                    files.extend(
                        str(part_path(data, resolution, table.name, key, name))
                        for name in available[key]
                    )
        if used:
            used = _merge(used)
            result.pieces.append(Piece(resolution, table, files, used))
            rolled.extend(used)
            remaining = _subtract(remaining, used)
    rolled = _merge(rolled)
    edge_files = raw_paths(raw_files, remaining) if remaining else []
    if edge_files:
        result.pieces.append(Piece("raw", None, edge_files, remaining))
    if rolled:
        uncovered = [(h, n) for h, n in raw_files if not manifest.covers(h, n, data)]
        late_files = raw_paths(uncovered, rolled)
        if late_files:
            result.pieces.append(Piece("raw", None, late_files, rolled))
    return result
