"""Exporters: the running collector's counters merged with what the store holds per exporter.

The collector's counters (``exporters.json``, :mod:`lanalyze.flows.exporters`) start from zero
at every collector start, so after a restart they alone would say no exporter has sent
anything while the store holds weeks of its flows. :func:`exporters_overview` is the one
reader-side answer the CLI (``flows exporters``), the console's Exporters page and
``/api/flows/exporters`` all show: each live row with its exporter's stored totals, then the
exporters only the store knows ("not heard from since the collector started").

Stored totals are one query over the whole store grouped by the ``exporter`` column (the
same planner, rollup tables and sampling scaling as ``flows top --by exporter``, so the
numbers are equal), held to rollups of a day or finer. The first and last receive times come
from the same query to the day, then from a second one over those few days' hourly rollups
(and raw flows at the recent edge): to the hour, to the minute or exactly near "now".
The store does not keep the observation domain, so the stored totals are per exporter address.

When the raw flows to read (the ones not rolled up yet) exceed ``flows.query.max_raw_bytes``
the totals are taken from the rollups alone and :attr:`StoredExporters.unread` says what was
left out; a store that cannot be read at all leaves the stored columns empty with the reason,
never failing the caller. Input: the store and ``exporters.json`` are ours (written by the
collector); a malformed ``exporters.json`` is reported, not trusted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lanalyze.flows.errors import ReportError
from lanalyze.flows.exporters import (
    ExporterCounters,
    exporters_path,
    protocol_name,
    read_exporters,
    version_label,
)
from lanalyze.flows.query import engine
from lanalyze.flows.query.compile import compile_filter
from lanalyze.flows.query.dimensions import KeyExpr, parse_dimensions
from lanalyze.flows.query.planner import Plan
from lanalyze.flows.query.reports.common import describe, empty, plan_variants, union
from lanalyze.flows.query.sql import Column, Planned, key_names
from lanalyze.flows.query.timespec import MAX_MS, MIN_MS, iso
from lanalyze.flows.store.layout import DAY_MS, HOUR_MS
from lanalyze.flows.store.paths import flow_dir

# The totals read rollups of a day or finer (no week buckets: a time read from one would say
# only which week it is in); first and last are then refined from those days' hourly rollups.
# On a 30-day store (bench/console_bench.py's, 3 M flows) the totals read ~34 parts instead
# of ~720 hourly ones: ~0.1 s rather than ~0.4 s warm.
FINEST_BUCKET = DAY_MS
MAX_REFINED_DAYS = 16
MAX_STORED = 10_000
"""Stored exporters listed at most (the default of ``flows.max_exporters``)."""


@dataclass(frozen=True)
class StoredExporter:
    """What the store holds of one exporter's flows (bytes and packets scaled by sampling)."""

    exporter: str
    bytes: int
    packets: int
    flows: int
    first_ms: int
    """Receive time of its oldest stored flow, UTC ms (to the hour: its hourly bucket's start)."""
    last_ms: int
    """Receive time of its newest stored flow, UTC ms (its hourly bucket's start, or the
    exact time when read from raw flows)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "stored_bytes": self.bytes,
            "stored_packets": self.packets,
            "stored_flows": self.flows,
            "stored_first_ms": self.first_ms,
            "stored_last_ms": self.last_ms,
            "stored_first": iso(self.first_ms),
            "stored_last": iso(self.last_ms),
        }


@dataclass
class StoredExporters:
    rows: list[StoredExporter] = field(default_factory=list)
    plan: str = "no data"
    unread: str = ""
    """What could not be read ("" when every stored flow was counted)."""

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "unread": self.unread}


def stored_exporters(data: Path) -> StoredExporters:
    """Per exporter, the stored totals and first/last receive time over the whole store.

    ``data`` is the flow directory (``<data_dir>/flows``). Never raises for a store too big
    for the raw budget: the rollups alone answer and ``unread`` says what was left out.
    """
    (dim,) = parse_dimensions("exporter")
    (key,) = key_names([dim])
    flt = compile_filter(None)
    head = [Column("received", KeyExpr("{t}"))]

    def run(rollups_only: bool) -> StoredExporters:
        planned = plan_variants(data, MIN_MS, MAX_MS, [dim], flt, head=head, finest=FINEST_BUCKET)
        unread = ""
        if rollups_only:
            planned, unread = _without_raw(planned)
        if empty(planned):
            return StoredExporters([], describe(planned), unread)
        backend = engine.backend()
        base = f"{key}__{dim.bases[0][0]}"
        rows = backend.execute(
            backend.dialect.exporter_totals(union(planned, flt), base, MAX_STORED + 1)
        )
        rows = [row for row in rows if row[0] is not None]
        if len(rows) > MAX_STORED:
            # Spoofed exporter addresses can fill a store with many: list the biggest.
            rows = rows[:MAX_STORED]
            unread = "; ".join(
                filter(None, [unread, f"only the {MAX_STORED} exporters with most bytes"])
            )
        bounds = _refine(data, [(int(r[4]), int(r[5])) for r in rows], rollups_only)
        found = []
        for row in rows:
            first, last = int(row[4]), int(row[5])
            finer = bounds.get(row[0])
            if finer is not None:
                first, last = max(first, finer[0]), max(last, finer[1])
            found.append(
                StoredExporter(
                    str(dim.render((row[0],))),
                    int(row[1] or 0),
                    int(row[2] or 0),
                    int(row[3] or 0),
                    first,
                    last,
                )
            )
        return StoredExporters(found, describe(planned), unread)

    def _refine(
        data: Path, times: list[tuple[int, int]], rollups_only: bool
    ) -> dict[Any, tuple[int, int]]:
        """First and last receive time to the hour, read from the days holding them only.

        The totals read day rollups, whose bucket start says only which day a time is in.
        No exporter has a flow before its first day or after its last, so min and max over
        those few days' hourly rollups (and raw flows at the recent edge) are its first and
        last to the hour; more distinct days than :data:`MAX_REFINED_DAYS` keep day precision.
        """
        days = sorted({t - t % DAY_MS for pair in times for t in pair})
        if not days or len(days) > MAX_REFINED_DAYS:
            return {}
        planned: Planned = []
        for day in days:
            planned.extend(
                plan_variants(data, day, day + DAY_MS, [dim], flt, head=head, finest=HOUR_MS)
            )
        if rollups_only:
            planned, _ = _without_raw(planned)
        if empty(planned):
            return {}
        backend = engine.backend()
        base = f"{key}__{dim.bases[0][0]}"
        rows = backend.execute(
            backend.dialect.exporter_totals(union(planned, flt), base, MAX_STORED + 1)
        )
        return {row[0]: (int(row[4]), int(row[5])) for row in rows if row[0] is not None}

    try:
        return engine.with_replan(lambda: run(False))
    except ReportError:
        # Over the raw budget (rollups not built for a long stretch): count what the
        # rollups hold and say which raw flows were not read.
        try:
            return engine.with_replan(lambda: run(True))
        except ReportError as exc:
            return StoredExporters([], "no data", f"the store could not be read: {exc}")


def _without_raw(planned: Planned) -> tuple[Planned, str]:
    kept: Planned = []
    skipped = 0
    for the_plan, columns in planned:
        pieces = [p for p in the_plan.pieces if p.source != "raw"]
        skipped += sum(len(p.files) for p in the_plan.pieces if p.source == "raw")
        kept.append((Plan(pieces, the_plan.table), columns))
    limit = engine.max_raw_bytes()
    return kept, (
        f"{skipped} raw flow files not rolled up yet were not read (more than "
        f"flows.query.max_raw_bytes = {limit} bytes): the stored totals count the rollups only"
    )


@dataclass(frozen=True)
class ExporterRow:
    """One exporter: the collector's counters for it (None: not heard from since the
    collector started) and its stored totals (None: nothing of it stored)."""

    exporter: str
    live: ExporterCounters | None
    stored: StoredExporter | None

    def to_json(self) -> dict[str, Any]:
        # The live fields keep the names and types exporters.json has always had (zeros for
        # an exporter known only from the store), so older readers keep working.
        live = self.live or ExporterCounters(self.exporter, 0)
        data: dict[str, Any] = {**asdict(live), "live": self.live is not None}
        # ``version`` stays the counted number (65541 for sFlow); ``protocol`` reads it.
        data["protocol"] = protocol_name(live.version)
        if self.stored is not None:
            data.update(self.stored.to_json())
        else:
            data.update(StoredExporter(self.exporter, 0, 0, 0, 0, 0).to_json())
            data.update({"stored_first_ms": None, "stored_last_ms": None})
            data.update({"stored_first": None, "stored_last": None})
        return data


@dataclass
class ExportersOverview:
    rows: list[ExporterRow]
    collector: dict[str, Any] | None
    """The rest of ``exporters.json`` (``started_ms``, ``written_ms``, ``kernel_drops``...);
    None when no collector has written it here or it could not be read."""
    collector_problem: str
    """Why there are no live counters ("" when there are)."""
    collector_missing: bool
    """No ``exporters.json`` at all (no collector has run with this data directory)."""
    stored: StoredExporters

    def to_json(self) -> dict[str, Any]:
        return {
            **(self.collector or {}),
            "exporters": [row.to_json() for row in self.rows],
            "stored": self.stored.to_json(),
        }


def exporters_overview(data_dir: Path) -> ExportersOverview:
    """The collector's live counters and the store's per-exporter totals, merged.

    ``data_dir`` is the general data directory. Live rows come first in the collector's
    order, each with its address's stored totals; exporters only the store knows follow.
    """
    collector: dict[str, Any] | None = None
    problem = ""
    missing = False
    try:
        collector = read_exporters(data_dir)
    except FileNotFoundError:
        missing = True
        problem = f"no collector has run with this data directory ({exporters_path(data_dir)})"
    except (OSError, ValueError) as exc:
        problem = f"cannot read the collector's counters: {exc}"
    stored = stored_exporters(flow_dir(data_dir))
    by_address = {row.exporter: row for row in stored.rows}
    known = {f.name for f in fields(ExporterCounters)}
    rows: list[ExporterRow] = []
    seen: set[str] = set()
    for item in (collector or {}).get("exporters", []):
        if not isinstance(item, dict):
            continue
        try:
            counts = {k: int(item.get(k) or 0) for k in known if k != "exporter"}
        except (TypeError, ValueError):
            problem = "the collector's counters file holds a malformed row (skipped)"
            continue
        live = ExporterCounters(exporter=str(item.get("exporter", "?")), **counts)
        rows.append(ExporterRow(live.exporter, live, by_address.get(live.exporter)))
        seen.add(live.exporter)
    rows.extend(ExporterRow(r.exporter, None, r) for r in stored.rows if r.exporter not in seen)
    rest = None
    if collector is not None:
        rest = {k: v for k, v in collector.items() if k != "exporters"}
    return ExportersOverview(rows, rest, problem, missing, stored)


def _utc(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


NOT_SINCE_START = "not since collector start"


def format_table(overview: ExportersOverview) -> str:
    """The overview as an aligned text table, then kernel drops, freshness and what the
    stored columns could not count."""
    header = ["EXPORTER", "DOMAIN", "VER", "PACKETS", "FLOWS", "SEQ_GAPS", "DECODE_ERR"]
    header += ["UNKNOWN_TPL", "LAST_SEEN", "STORED_FLOWS", "STORED_PACKETS", "STORED_BYTES"]
    header += ["FIRST_STORED", "LAST_STORED"]
    lines_of_cells = [header]
    for row in overview.rows:
        live = row.live
        if live is None:
            cells = ["-"] * 7 + [NOT_SINCE_START]
        else:
            cells = [str(live.observation_domain), version_label(live.version) or "-"]
            cells += [str(live.packets), str(live.flows), str(live.sequence_gaps)]
            cells += [str(live.decode_errors), str(live.unknown_template_records)]
            cells += [_utc(live.last_seen_ms)]
        stored = row.stored
        if stored is None:
            cells += ["0", "0", "0", "-", "-"]
        else:
            cells += [str(stored.flows), str(stored.packets), str(stored.bytes)]
            cells += [_utc(stored.first_ms), _utc(stored.last_ms)]
        lines_of_cells.append([row.exporter, *cells])
    widths = [max(len(r[i]) for r in lines_of_cells) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in lines_of_cells
    ]
    if len(lines_of_cells) == 1:
        lines.append("(no exporter seen yet)")
    collector = overview.collector
    if collector is not None:
        for listen, count in sorted((collector.get("kernel_drops") or {}).items()):
            lines.append(f"kernel receive drops on {listen}: {count}")
        lines.append(
            f"counted since {_utc(int(collector.get('started_ms', 0)))}, "
            f"updated {_utc(int(collector.get('written_ms', 0)))}"
        )
    elif overview.collector_problem:
        lines.append(f"live counters: {overview.collector_problem}")
    lines.append("stored: flows, packets and bytes of the whole store (per exporter address)")
    if overview.stored.unread:
        lines.append(f"stored: {overview.stored.unread}")
    return "\n".join(lines) + "\n"
