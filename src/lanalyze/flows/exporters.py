"""Per-exporter counters: summed in each worker, merged in the parent, shown three ways.

Each worker keeps cumulative counters per (exporter address, observation domain) and sends a
snapshot to the parent every second. The parent merges the workers' latest snapshots and
exposes them on ``/metrics`` (:class:`FlowMetrics`, a Prometheus custom collector), and in
``<data_dir>/flows/exporters.json`` (rewritten atomically every few seconds), which
``lanalyze flows exporters`` reads from another process.

The number of (exporter, domain) keys is bounded (``flows.max_exporters``); beyond it the
counts go to one ``overflow`` row, so a spoofed-source flood cannot grow memory or the
number of metric series. The JSON file is ours; reading it still tolerates a missing or
half-understood file (an older version's) with a clear message.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lanalyze.datadir import atomic_write_bytes
from lanalyze.flows.decode import ipfix, sflow, v5, v9
from lanalyze.flows.store import paths

OVERFLOW = "overflow"
COUNTERS = (
    "packets",
    "flows",
    "sequence_gaps",
    "decode_errors",
    "unknown_template_records",
    "template_changes",
)


def protocol_name(version: int) -> str:
    """The readable protocol of a counted ``version`` ("" when none was decoded yet).

    The ``version`` the decoders count is the datagram's own version number, except sFlow's,
    counted under :data:`~lanalyze.flows.decode.sflow.STATS_VERSION` (0x10005) so it stays
    apart from NetFlow v5; a reader shows this name rather than that number.
    """
    if not version:
        return ""
    if version == sflow.STATS_VERSION:
        return "sFlow 5"
    if version == ipfix.VERSION:
        return "IPFIX"
    if version in v5.RECORD_LENGTHS or version == v9.VERSION:
        return f"NetFlow v{version}"
    return f"version {version}"


def version_label(version: int) -> str:
    """The version column of the exporters table: the NetFlow/IPFIX version number as it has
    always been shown, "sFlow 5" for sFlow (whose counted number, 65541, means nothing to a
    reader); "" when none was decoded yet."""
    if version == sflow.STATS_VERSION:
        return protocol_name(version)
    return str(version) if version else ""


def exporters_path(data_dir: Path) -> Path:
    """``exporters.json`` of a general data directory (written 0600, like every store file)."""
    return paths.exporters_path(paths.flow_dir(data_dir))


class StatsLike(Protocol):
    """What a decoder reports per exporter and domain for one batch (deltas)."""

    exporter: str
    observation_domain: int
    version: int
    packets: int
    flows: int
    sequence_gaps: int
    decode_errors: int
    unknown_template_records: int
    template_changes: int


@dataclass
class ExporterCounters:
    exporter: str
    observation_domain: int
    version: int = 0
    packets: int = 0
    flows: int = 0
    sequence_gaps: int = 0
    decode_errors: int = 0
    unknown_template_records: int = 0
    last_seen_ms: int = 0
    template_changes: int = 0
    """Added after ``last_seen_ms``, so positional construction keeps its meaning."""

    def add(self, other: ExporterCounters | StatsLike, seen_ms: int) -> None:
        if other.version:
            self.version = other.version
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_seen_ms = max(self.last_seen_ms, seen_ms)


class ExporterCounterSet:
    """Cumulative counters of one process, bounded to ``max_exporters`` keys."""

    def __init__(self, max_exporters: int = 10_000) -> None:
        self.max_exporters = max_exporters
        self._rows: dict[tuple[str, int], ExporterCounters] = {}

    def add(self, stats: Iterable[ExporterCounters | StatsLike], seen_ms: int) -> None:
        rows = self._rows
        for item in stats:
            key = (item.exporter, int(item.observation_domain))
            row = rows.get(key)
            if row is None:
                if len(rows) >= self.max_exporters:
                    key = (OVERFLOW, 0)
                    row = rows.get(key)
                if row is None:
                    row = rows[key] = ExporterCounters(key[0], key[1])
            row.add(item, getattr(item, "last_seen_ms", 0) or seen_ms)

    def note_error(self, exporter: str, seen_ms: int) -> None:
        """A datagram no decoder stats cover (for example a receive-side problem)."""
        self.add([ExporterCounters(exporter, 0, decode_errors=1)], seen_ms)

    def rows(self) -> list[ExporterCounters]:
        return sorted(self._rows.values(), key=lambda r: (r.exporter, r.observation_domain))

    def snapshot(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rows()]


def merge_snapshots(
    snapshots: Iterable[Iterable[Mapping[str, Any]]], max_exporters: int = 10_000
) -> list[ExporterCounters]:
    merged = ExporterCounterSet(max_exporters)
    known = {f.name for f in fields(ExporterCounters)}
    for snapshot in snapshots:
        merged.add(
            (ExporterCounters(**{k: v for k, v in row.items() if k in known}) for row in snapshot),
            0,
        )
    return merged.rows()


@dataclass
class CollectorTotals:
    """Everything the parent knows, merged: what /metrics and exporters.json show."""

    exporters: list[ExporterCounters]
    kernel_drops: dict[str, int]
    store: dict[str, int]
    datagrams: int
    started_ms: int
    decoder: dict[str, int] = field(default_factory=dict)
    """The workers' decoder bounds summed (:class:`~lanalyze.flows.decode.DecoderCounters`,
    ``state_bytes``, ``templates``)."""

    def to_json(self) -> bytes:
        data = {
            "written_ms": time.time_ns() // 1_000_000,
            "started_ms": self.started_ms,
            "exporters": [asdict(row) for row in self.exporters],
            "kernel_drops": self.kernel_drops,
            "store": self.store,
            "datagrams": self.datagrams,
            "decoder": self.decoder,
        }
        return json.dumps(data, indent=1).encode() + b"\n"

    def write(self, data_dir: Path) -> None:
        atomic_write_bytes(exporters_path(data_dir), self.to_json())


def read_exporters(data_dir: Path) -> dict[str, Any]:
    """The collector's last exporters.json; ``FileNotFoundError`` when none ran here."""
    data = json.loads(exporters_path(data_dir).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("exporters"), list):
        raise ValueError(f"{exporters_path(data_dir)}: not an exporters file")
    return data


class FlowMetrics(Collector):
    """Prometheus view of :class:`CollectorTotals`, read at scrape time."""

    def __init__(self, totals: Callable[[], CollectorTotals]) -> None:
        self._totals = totals
        self._lock = threading.Lock()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        totals = self._totals()
        labels = ["exporter", "observation_domain"]
        help_text = {
            "packets": "Export packets (datagrams) decoded per exporter.",
            "flows": "Flow records decoded per exporter.",
            "sequence_gaps": "Export packets the exporter's sequence numbers say were lost.",
            "decode_errors": "Export packets or sets dropped as malformed.",
            "unknown_template_records": "Data records dropped because their template is unknown.",
            "template_changes": "Templates redefined with other fields under a known id.",
        }
        families = {
            name: CounterMetricFamily(f"lanalyze_flow_{name}", text, labels=labels)
            for name, text in help_text.items()
        }
        last_seen = GaugeMetricFamily(
            "lanalyze_flow_exporter_last_seen_seconds",
            "When the exporter's last export packet arrived (Unix time).",
            labels=labels,
        )
        for row in totals.exporters:
            key = [row.exporter, str(row.observation_domain)]
            for name, family in families.items():
                family.add_metric(key, getattr(row, name))
            last_seen.add_metric(key, row.last_seen_ms / 1000)
        yield from families.values()
        yield last_seen
        drops = CounterMetricFamily(
            "lanalyze_flow_kernel_drops",
            "Datagrams the kernel dropped because a flow socket's receive buffer was full.",
            labels=["listen"],
        )
        for listen, count in sorted(totals.kernel_drops.items()):
            drops.add_metric([listen], count)
        yield drops
        datagrams = CounterMetricFamily(
            "lanalyze_flow_datagrams_received", "UDP datagrams read from the flow sockets."
        )
        datagrams.add_metric([], totals.datagrams)
        yield datagrams
        store_help = {
            "segments": "Parquet segments written to the flow store.",
            "rows": "Flow records written to the flow store.",
            "bytes": "Bytes of Parquet segments written to the flow store.",
            "errors": "Segment writes that failed (their rows are dropped).",
            "dropped_rows": "Flow records lost to failed segment writes.",
        }
        for name, text in store_help.items():
            family = CounterMetricFamily(f"lanalyze_flow_store_{name}", text)
            family.add_metric([], totals.store.get(name, 0))
            yield family
        for name, (kind, metric, text) in CLICKHOUSE_METRICS.items():
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            clickhouse = family_type(metric, text)
            clickhouse.add_metric([], totals.store.get(name, 0))
            yield clickhouse
        yield from _decoder_metrics(totals.decoder)


CLICKHOUSE_METRICS = {
    # StoreStats field -> (type, metric, help): the ClickHouse writer's (0 with Parquet).
    "inserts": (
        "counter",
        "lanalyze_flow_clickhouse_inserts",
        "Inserts into ClickHouse that succeeded (rows: lanalyze_flow_store_rows).",
    ),
    "spooled": (
        "counter",
        "lanalyze_flow_spool_batches",
        "Batches put in the local spool because ClickHouse failed or the spool was not empty.",
    ),
    "replayed": (
        "counter",
        "lanalyze_flow_spool_replayed_batches",
        "Spooled batches inserted into ClickHouse later.",
    ),
    "duplicates": (
        "counter",
        "lanalyze_flow_spool_duplicate_batches",
        "Spooled batches found already stored (an insert that had succeeded unseen): not "
        "inserted again.",
    ),
    "partial": (
        "counter",
        "lanalyze_flow_spool_partial_batches",
        "Spooled batches found partly stored: left alone and logged (should stay 0).",
    ),
    "spool_bytes": ("gauge", "lanalyze_flow_spool_bytes", "Bytes of batches in the spool."),
    "spool_segments": ("gauge", "lanalyze_flow_spool_segments", "Batches in the spool."),
    "spool_dropped_rows": (
        "counter",
        "lanalyze_flow_spool_dropped_rows",
        "Flow records dropped because the spool was full (flows.store.spool_max_bytes).",
    ),
    "spool_dropped_batches": (
        "counter",
        "lanalyze_flow_spool_dropped_batches",
        "Batches dropped because the spool was full.",
    ),
    # The collector's ClickHouse maintainer (lanalyze.flows.store.clickhouse.maintain)
    "partitions_dropped": (
        "counter",
        "lanalyze_flow_clickhouse_partitions_dropped",
        "ClickHouse partitions dropped past flows.rollup.*_max_age.",
    ),
    "rollup_partitions_filled": (
        "counter",
        "lanalyze_flow_clickhouse_rollup_partitions_filled",
        "Hour (per day) and day (per week) rollup partitions recomputed, per server and table "
        "group.",
    ),
    "rollup_fill_failures": (
        "counter",
        "lanalyze_flow_clickhouse_rollup_fill_failures",
        "Rollup fill passes that failed on a server (done again next round).",
    ),
    "rollup_late_skipped": (
        "counter",
        "lanalyze_flow_clickhouse_rollup_late_skipped",
        "Rollup partitions not recomputed because their source was past retention (flows "
        "that arrived that late are in the raw and finer tables only).",
    ),
}


DECODER_COUNTERS = {
    "templates_refused": "Templates not stored: no room in flows.template_memory(_per_exporter).",
    "templates_evicted": "Templates dropped to make room for others (bytes or count bounds).",
    "exporters_evicted": "Exporters whose decoder state was dropped (flows.max_exporters, "
    "or to make room in flows.template_memory).",
    "datagrams_not_allowed": "Datagrams dropped unread: source outside flows.exporters_allowed.",
    "datagrams_capped": "Datagrams with more records than flows.max_records_per_datagram "
    "(the rest dropped).",
    "interface_counters": "sFlow generic interface counter records decoded.",
    "interface_counters_dropped": "sFlow interface counter records dropped: more than "
    "65536 in one receive batch, or 10000 waiting in a worker between two reports.",
    "application_names_learned": "Application names (IE 95 -> IE 96) learned or changed from "
    "exporters' option records.",
    "application_names_refused": "Announced application names not kept (not printable UTF-8, "
    "empty, or over 128 characters).",
    "application_names_evicted": "Application names dropped to make room (16384 per worker).",
}


ENRICH_COUNTERS = {
    "flows": "Flows enriched at ingest (lanalyze.flows.enrich).",
    "geo_lookups": "Distinct addresses looked up in the GeoIP/AS databases' ranges.",
    "database_reloads": "GeoIP/AS database files reopened because they changed.",
    "database_failures": "Checks that found a GeoIP/AS database missing or unreadable.",
    "interface_rules_matched": "Interfaces classified by a flows.enrich.interfaces rule.",
}


def _decoder_metrics(
    decoder: Mapping[str, int],
) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    for name, text in DECODER_COUNTERS.items():
        family = CounterMetricFamily(f"lanalyze_flow_{name}", text)
        family.add_metric([], decoder.get(name, 0))
        yield family
    state = GaugeMetricFamily(
        "lanalyze_flow_template_state_bytes",
        "Bytes of template and exporter state the workers hold (estimated footprint).",
    )
    state.add_metric([], decoder.get("state_bytes", 0))
    yield state
    templates = GaugeMetricFamily("lanalyze_flow_templates", "Templates the workers hold.")
    templates.add_metric([], decoder.get("templates", 0))
    yield templates
    # The workers send their enrichment counters with the decoder's (``enrich_`` keys).
    for name, text in ENRICH_COUNTERS.items():
        family = CounterMetricFamily(f"lanalyze_flow_enrich_{name}", text)
        family.add_metric([], decoder.get(f"enrich_{name}", 0))
        yield family
