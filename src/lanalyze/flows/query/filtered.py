"""Filtered raw flows kept in memory, so a drill-down page scans its raw files once.

A host or port page filters raw flows (``host 10.0.0.1``: no rollup keeps both address
columns), and each of its reports (chart, applications, peers, flow list) used to scan the
same files again with the same filter. Here the first report reads, per file, every flow that
passes the filter (the columns of :data:`COLUMNS`) into an Arrow table; the page's other reports
query those tables (DuckDB over registered Arrow data) instead of the files. Answers are the
same: these are exactly the rows that pass the filter, and the reports still apply their time
intervals to them.

Keyed by (file path, filter SQL, parameters): raw files never change under their final name
(the store's contract), so an entry never goes stale; a deleted file is no longer planned.
Bounded: a scan that keeps more than :data:`MAX_ROWS` flows is not kept (the report reads
the files as before), and the entries together hold at most :data:`MAX_BYTES`, least recently
used first out. Input trust: our own files; the filter is compiled with parameters only.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from lanalyze.flows import catalogue
from lanalyze.flows.query.compile import CompiledFilter
from lanalyze.flows.query.raw import raw_reader

if TYPE_CHECKING:
    # Imported where used: the report commands load this module (sql.py asks covers()) but
    # a command reading rollups must not pay for pyarrow (see docs/performance.md).
    import duckdb
    import pyarrow as pa

MAX_ROWS = 2_000_000
MAX_BYTES = 256 * 2**20

# What the console's charts and tables read. The filter is applied while reading, so its
# columns need not be kept. Reading all ~35 columns made the first report of a page slower
# than the page's reports had been together; a report naming another column (the flow list's
# times, ``--by tos``) reads the files instead.
COLUMNS = (
    "time_received",
    "sampling_rate",
    "bytes",
    "packets",
    "flows",
    "exporter",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "ip_version",
    "in_if",
    "out_if",
)


@functools.cache
def _others() -> re.Pattern[str]:
    # Compiled on first use: a report command reading only rollups never asks.
    return re.compile(
        r"\b(" + "|".join(c.name for c in catalogue.COLUMNS if c.name not in COLUMNS) + r")\b"
    )


def covers(sql: str) -> bool:
    """True when ``sql`` (a report's select list) names only columns kept here."""
    return _others().search(sql) is None


Key = tuple[str, str, tuple[object, ...]]
_entries: OrderedDict[Key, pa.Table] = OrderedDict()
_size = [0]
_lock = threading.Lock()


def flows(
    connection: duckdb.DuckDBPyConnection, files: list[str], flt: CompiledFilter
) -> pa.Table | None:
    """The flows of ``files`` passing ``flt`` (None: more than :data:`MAX_ROWS`)."""
    # The `duckdb` package, not only the extension the engine imports: it is what gives a
    # connection its relational API (.sql, .to_arrow_table) used here.
    import duckdb  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = [(path, flt.sql, flt.params) for path in files]
    found: dict[str, pa.Table] = {}
    with _lock:
        for key in keys:
            hit = _entries.get(key)
            if hit is not None:
                _entries.move_to_end(key)
                found[key[0]] = hit
    missing = [path for path in files if path not in found]
    if missing:
        # Segments may lack the enrichment columns a filter names: raw_reader reads by name.
        reader = raw_reader(flt.sql, ", filename = true")
        # Fixed text; the file list and the filter's values are parameters.
        result = connection.sql(
            f"SELECT {', '.join(COLUMNS)}, filename AS lanalyze_file "  # noqa: S608
            f"FROM {reader} WHERE {flt.sql}",
            params=[missing, *flt.params],
        ).to_arrow_table()
        read: pa.Table = result if result is not None else pa.table({"lanalyze_file": []})
        if read.num_rows > MAX_ROWS:
            return None
        names = read.column("lanalyze_file")
        rows = read.drop_columns(["lanalyze_file"])
        for path in missing:
            part = rows.filter(pc.equal(names, path)) if len(missing) > 1 else rows
            found[path] = part.combine_chunks()
            _remember((path, flt.sql, flt.params), found[path])
    tables = [found[path] for path in files]
    return pa.concat_tables(tables) if tables else None


def _remember(key: Key, table: pa.Table) -> None:
    with _lock:
        if key in _entries:
            return
        _entries[key] = table
        _size[0] += table.nbytes
        while _size[0] > MAX_BYTES and _entries:
            _, dropped = _entries.popitem(last=False)
            _size[0] -= dropped.nbytes


def clear() -> None:
    with _lock:
        _entries.clear()
        _size[0] = 0
