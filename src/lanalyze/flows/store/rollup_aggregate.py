"""Per-minute sums of raw flows for every rollup table, fast enough to follow the collector.

The rollup maintainer used to run one DuckDB ``GROUPING SETS`` query over the raw segments
(about 2 µs of CPU per flow: DuckDB hashes 16-byte BLOB keys and sums into HUGEINT, once per
table). Here the work per flow is cut three ways:

* **Fewer passes over the flows.** Only the *base* tables (those whose columns no other table
  holds all of: ``summary``, the ports, the address+protocol tables) are summed from the
  flows; a table whose columns are a subset of a base table's (``iface``, ``proto``, ``app``
  from ``summary``; ``src_addr`` from ``src_addr_proto``) is summed from that table's rows,
  which are far fewer than flows. Sums are associative, so the result is the same.
* **Arrow's hash aggregation** (``pyarrow.Table.group_by``) sums uint64 exactly and hashes
  fixed-size binary keys several times faster than DuckDB did here.
* **Only the needed columns are decoded**, file by file with ``ParquetFile.read`` (the dataset
  API costs several times more per file), and each file's latest ``time_received`` comes from
  the rows already read instead of reopening its footer.

Input trust: the raw segments are our own collector's files (catalogue schema). The output
tables have the schema the DuckDB path wrote (``time`` uint64, keys, ``bytes``, ``packets``,
``flows`` uint64, addresses as ``binary``), so old and new parts read together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lanalyze.flows import catalogue
from lanalyze.flows.store.layout import MINUTE_MS, ROLLUP_TABLES, RollupTable

SUMS = ("bytes", "packets", "flows")
_AGGREGATES = [(name, "sum") for name in SUMS]
_RAW_KEYS = tuple(dict.fromkeys(c for t in ROLLUP_TABLES for c in t.columns if c != "service_port"))
RAW_COLUMNS = ("time_received", "sampling_rate", *SUMS, *(c for c in _RAW_KEYS if c not in SUMS))
if "service_port" in {c for t in ROLLUP_TABLES for c in t.columns}:
    RAW_COLUMNS = tuple(dict.fromkeys((*RAW_COLUMNS, "src_port", "dst_port")))

WORK_BYTES_PER_ROW = 512
"""Bytes summing a chunk takes per raw flow at its peak: the decoded columns (~135 B), the
prepared keys and scaled sums, the hash tables and the sums themselves (430 B measured on
65,536 uniform clients, the worst case for the address tables; docs/performance.md)."""


def _is_base(table: RollupTable) -> bool:
    return not any(set(table.columns) < set(other.columns) for other in ROLLUP_TABLES)


def _source_of(table: RollupTable) -> str | None:
    """The smallest base table holding every column of ``table`` (None: sum from flows)."""
    if _is_base(table):
        return None
    wider = [o for o in ROLLUP_TABLES if _is_base(o) and set(table.columns) < set(o.columns)]
    return min(wider, key=lambda t: len(t.columns)).name


SOURCES: dict[str, str | None] = {t.name: _source_of(t) for t in ROLLUP_TABLES}
"""Rollup table -> the base table it is summed from (None: from the flows)."""


@dataclass
class Partial:
    """Per-minute sums of some flows for every table, and what was read."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    rows: int = 0
    latest: dict[str, int] = field(default_factory=dict)
    """Path -> the latest ``time_received`` in that file."""


def read_flows(paths: Sequence[str]) -> tuple[pa.Table, dict[str, int]]:
    """The needed columns of some raw segments, and each file's latest ``time_received``."""
    tables = []
    latest: dict[str, int] = {}
    for path in paths:
        file = pq.ParquetFile(path)
        present = set(file.schema_arrow.names)
        wanted = [name for name in RAW_COLUMNS if name in present]
        table = file.read(columns=wanted, use_threads=False)
        if len(wanted) < len(RAW_COLUMNS):
            # A segment written before the enrichment columns existed, or without the name
            # columns no flow of it had (enrichment not configured): they are unknown.
            table = _missing_as_null(table)
        if table.num_rows:
            latest[path] = int(pc.max(table.column("time_received")).as_py())
            tables.append(table)
    if not tables:
        return pa.table({}), latest
    return pa.concat_tables(tables), latest


def _missing_as_null(table: pa.Table) -> pa.Table:
    """``table`` with every column of :data:`RAW_COLUMNS`, those it lacks null (names) or
    zero (numbers): only the missing ones are made, not the whole catalogue."""
    rows = table.num_rows
    schema = catalogue.arrow_schema()
    columns = []
    for name in RAW_COLUMNS:
        if name in table.column_names:
            columns.append(table.column(name))
            continue
        kind = schema.field(name).type
        columns.append(
            pa.nulls(rows, kind)
            if pa.types.is_string(kind)
            else pa.array(np.zeros(rows, catalogue.BY_NAME[name].numpy_dtype), kind)
        )
    return pa.Table.from_arrays(columns, schema=pa.schema([schema.field(n) for n in RAW_COLUMNS]))


def summarise(flows: pa.Table) -> dict[str, pa.Table]:
    """Per-minute sums of raw flows (catalogue columns) for every rollup table."""
    # Arrow compute on the (possibly chunked) columns: no concatenation, no numpy copies.
    received = flows.column("time_received")
    minute = pa.scalar(MINUTE_MS, pa.uint64())
    columns: dict[str, pa.ChunkedArray | pa.Array] = {
        "time": pc.multiply(pc.divide(received, minute), minute),
    }
    for name in _RAW_KEYS:
        # Addresses stay fixed-size while summed (cheaper to hash); cast once summed.
        columns[name] = flows.column(name)
    if "service_port" in {c for t in ROLLUP_TABLES for c in t.columns}:
        columns["service_port"] = pc.min_element_wise(
            flows.column("src_port"), flows.column("dst_port")
        )
    rate = flows.column("sampling_rate")
    bounds = pc.min_max(rate).as_py()
    unsampled = flows.num_rows == 0 or (bounds["min"] == 1 and bounds["max"] == 1)
    wide_rate = rate.cast(pa.uint64())
    for name in ("bytes", "packets"):
        values = flows.column(name)
        columns[name] = values if unsampled else pc.multiply(values, wide_rate)
    columns["flows"] = flows.column("flows")
    prepared = pa.table(columns)
    result: dict[str, pa.Table] = {}
    for table in ROLLUP_TABLES:
        if SOURCES[table.name] is None:
            result[table.name] = _sum_by(prepared, ("time", *table.columns))
    for table in ROLLUP_TABLES:
        source = SOURCES[table.name]
        if source is not None:
            result[table.name] = _sum_by(result[source], ("time", *table.columns))
    return {name: _binary_keys(table) for name, table in result.items()}


def _binary_keys(table: pa.Table) -> pa.Table:
    """Fixed-size addresses as plain ``binary``, the type DuckDB wrote (parts read together).

    The column is made one chunk first: ``group_by`` returns chunks of 32 Ki rows that are
    slices of one data buffer, and Arrow's fixed-size to ``binary`` cast copies a slice's
    whole parent buffer, so casting chunk by chunk held chunks x rows x 16 bytes (3 GiB for
    the sums of 2 M flows, 20 GiB and an OOM kill on a 10 M-flow backlog)."""
    for index, column_field in enumerate(table.schema):
        if pa.types.is_fixed_size_binary(column_field.type):
            column = table.column(index).combine_chunks()
            table = table.set_column(index, column_field.name, column.cast(pa.binary()))
    return table


def _sum_by(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    summed = table.group_by(list(keys), use_threads=False).aggregate(_AGGREGATES)
    return summed.rename_columns(
        [n.removesuffix("_sum") if n.endswith("_sum") else n for n in summed.column_names]
    ).select([*keys, *SUMS])


def merge(tables: Iterable[pa.Table], columns: tuple[str, ...], step: int = MINUTE_MS) -> pa.Table:
    """Partial sums (``time``, keys, sums) summed again per ``step`` bucket, sorted by time."""
    parts = [t for t in tables if t.num_rows]
    if not parts:
        return pa.table({})
    table = pa.concat_tables(parts)
    if step != MINUTE_MS or len(parts) > 1:
        if step != MINUTE_MS:
            width = pa.scalar(step, pa.uint64())
            table = table.set_column(
                table.column_names.index("time"),
                "time",
                pc.multiply(pc.divide(table.column("time"), width), width),
            )
        table = _sum_by(table, ("time", *columns))
    return table.sort_by([("time", "ascending")])


def summarise_files(paths: Sequence[str]) -> Partial:
    flows, latest = read_flows(paths)
    partial = Partial(latest=latest, rows=flows.num_rows)
    if flows.num_rows:
        partial.tables = summarise(flows)
    return partial
