"""Write side of the embedded flow store: immutable Parquet segments, renamed into place.

Layout (the contract the query side, rollups, compaction and retention rely on; the paths
are :mod:`lanalyze.flows.store.paths`)::

    <data_dir>/flows/raw/<YYYYMMDDHH>/<first_ms>-<writer id>-<seq>.parquet

``YYYYMMDDHH`` is the UTC hour of the segment's first ``time_received``, and every row of a
segment has its ``time_received`` inside that hour (a batch that straddles an hour is split).
The schema is :func:`lanalyze.flows.catalogue.arrow_schema`, less the enrichment name columns
that are null in every row of the segment (the default, enrichment not configured: they
would cost the writer ~4 ns a row each; readers treat a missing name column as null). The
ingest path hands the names over as dictionary arrays (``catalogue.batch_schema``), written
as they are: a Parquet string column, dictionary-encoded. A segment is written under a
temporary name in the same directory (``.<name>.tmp``, which no ``*.parquet`` glob matches),
fsynced, renamed and the directory fsynced: a file with its final name is complete and
immutable, so readers in other processes only list files, with no lock and no shared database
file (a DuckDB database file can be opened by one process only while it writes). Segments
are created 0600 in directories created 0700 (:mod:`lanalyze.datadir`).

The collector's segments are encoded by :mod:`lanalyze.flows.store.segmentfile` (numpy and
Arrow's LZ4 codec), others by pyarrow; both release the GIL while they copy and compress, so
:class:`BackgroundWriter` runs them in a thread beside the receive loop. Nothing here parses
untrusted bytes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lanalyze.datadir import create_private, fsync_dir, make_private_dirs
from lanalyze.flows.catalogue import LABEL_COLUMNS, arrow_schema, batch_schema
from lanalyze.flows.store import segmentfile
from lanalyze.flows.store.layout import hour_name
from lanalyze.flows.store.paths import raw_dir
from lanalyze.log import get_logger

log = get_logger(__name__)

Compression = Literal["zstd", "lz4", "snappy", "none"]

HOUR_MS = 3_600_000
DATA_PAGE_BYTES = 8 * 2**20
_INTEGER_ENCODING = {
    field.name: "BYTE_STREAM_SPLIT" for field in arrow_schema() if pa.types.is_integer(field.type)
}
_NAME_COLUMNS = [
    field.name
    for field in arrow_schema()
    if pa.types.is_string(field.type) and field.name != "extra"
]
"""The enrichment names (issue 16): few distinct values, so dictionary-encoded (a tenth of
the bytes of plain strings, for the same writer CPU)."""
COMPACT_DICTIONARY = 256
"""A name column's dictionary longer than this (an AS database's organisations) is cut to
the names the segment uses before it is written (~2 ns a row): Parquet writes the whole
dictionary, and a large one in every small segment would cost more than the flows."""
TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 600


def split_by_hour(table: pa.Table) -> Iterator[pa.Table]:
    """The rows of ``table`` grouped by UTC hour of ``time_received`` (usually one group)."""
    if table.num_rows == 0:
        return
    received = table.column("time_received")
    bounds = pc.min_max(received)
    first = bounds["min"].as_py() // HOUR_MS
    last = bounds["max"].as_py() // HOUR_MS
    if first == last:
        yield table
        return
    hours = pc.divide(received, pa.scalar(HOUR_MS, pa.uint64()))
    for hour in range(first, last + 1):
        part = table.filter(pc.equal(hours, pa.scalar(hour, pa.uint64())))
        if part.num_rows:
            yield part


def stored_names(table: pa.Table) -> pa.Table:
    """``table``'s name columns as a segment stores them: all-null ones left out, dictionary
    ones with one dictionary for the whole column (so Parquet writes it once and the indices
    as they are, instead of re-encoding the text), large dictionaries cut to what is used."""
    rows = table.num_rows
    for name in LABEL_COLUMNS:
        if name not in table.column_names:
            continue
        values = table.column(name)
        if values.null_count == rows:
            table = table.drop_columns([name])
        elif pa.types.is_dictionary(values.type):
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, _one_dictionary(values))
    return table


def _one_dictionary(values: pa.ChunkedArray) -> pa.ChunkedArray:
    first = values.chunk(0).dictionary
    if any(not chunk.dictionary.equals(first) for chunk in values.chunks[1:]):
        values = values.unify_dictionaries()  # a dictionary grew or was reloaded
        first = values.chunk(0).dictionary
    if len(first) <= COMPACT_DICTIONARY:
        return values
    parts = [_indices(chunk) for chunk in values.chunks]
    used = np.zeros(len(first), dtype=bool)
    for part in parts:
        used[part] = True  # 0 under nulls (lanalyze.flows.enrich.names): a harmless extra
    remap = (np.cumsum(used, dtype=np.int32) - 1).astype(np.int32)
    dictionary = first.filter(pa.array(used))
    return pa.chunked_array(
        [
            pa.DictionaryArray.from_arrays(
                pa.Array.from_buffers(
                    pa.int32(),
                    len(chunk),
                    [_validity(chunk), pa.py_buffer(remap[part])],
                    chunk.null_count,
                ),
                dictionary,
                safe=False,
            )
            for chunk, part in zip(values.chunks, parts, strict=True)
        ],
        values.type,
    )


def _indices(chunk: pa.DictionaryArray) -> np.ndarray:
    indices = chunk.indices
    data = indices.buffers()[1]
    assert data is not None
    return np.frombuffer(data, dtype=np.int32, count=indices.offset + len(indices))[
        indices.offset :
    ]


def _validity(chunk: pa.DictionaryArray) -> pa.Buffer | None:
    if not chunk.null_count:
        return None
    if chunk.indices.offset == 0:
        return chunk.indices.buffers()[0]
    # The validity bitmap of an offset slice starts mid-byte: copy the mask out.
    return pa.array(chunk.is_valid().to_numpy(zero_copy_only=False)).buffers()[1]


@dataclass
class StoreStats:
    segments: int = 0
    rows: int = 0
    bytes: int = 0
    errors: int = 0
    dropped_rows: int = 0
    # The ClickHouse writer's (lanalyze.flows.store.clickhouse.writer); 0 for Parquet.
    inserts: int = 0
    spooled: int = 0
    replayed: int = 0
    duplicates: int = 0
    partial: int = 0
    spool_bytes: int = 0
    spool_segments: int = 0
    spool_dropped_rows: int = 0
    spool_dropped_batches: int = 0


class SegmentWriter:
    """Writes tables as atomically renamed Parquet segments named by ``writer_id``, under the
    flow directory ``flows`` (``<data_dir>/flows``: :func:`~lanalyze.flows.store.paths.flow_dir`).

    ``writer_id`` must be unique among processes writing the same data directory at once
    (the collector uses the worker index plus a per-start random token).
    """

    def __init__(
        self,
        flows: Path,
        writer_id: str,
        *,
        compression: Compression = "zstd",
        compression_level: int | None = 1,
        row_group_rows: int = 1_000_000,
    ) -> None:
        if not writer_id or "-" in writer_id or "/" in writer_id:
            raise ValueError(f"writer id must be non-empty without '-' or '/': {writer_id!r}")
        self.root = raw_dir(flows)
        self.writer_id = writer_id
        self.compression = compression
        self.compression_level = compression_level if compression in ("zstd",) else None
        self.row_group_rows = row_group_rows
        self.schema = batch_schema()
        self.stats = StoreStats()
        self._seq = 0

    def write(self, batches: Sequence[pa.RecordBatch] | pa.Table) -> list[Path]:
        """Store the rows (any number, any hours) as segments; returns their final paths."""
        table = (
            batches
            if isinstance(batches, pa.Table)
            else pa.Table.from_batches(list(batches), schema=self.schema)
        )
        return [self._write_segment(part) for part in split_by_hour(table)]

    def _write_segment(self, table: pa.Table) -> Path:
        first_ms = int(table.column("time_received")[0].as_py())
        directory = self.root / hour_name(first_ms)
        make_private_dirs(directory)
        name = f"{first_ms}-{self.writer_id}-{self._seq:06d}.parquet"
        self._seq += 1
        final = directory / name
        tmp = directory / f".{name}{TMP_SUFFIX}"
        create_private(tmp)  # pyarrow truncates it and keeps the mode; the rename too
        self._write_file(table, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.rename(tmp, final)
        fsync_dir(directory)
        self.stats.segments += 1
        self.stats.rows += table.num_rows
        self.stats.bytes += size
        return final

    def _write_file(self, table: pa.Table, tmp: Path) -> None:
        """Encode ``table`` as Parquet into ``tmp`` (not yet durable)."""
        stored = stored_names(table)
        if segmentfile.can_write(stored, self.compression):
            # The collector's segments (no enrichment names): encoded with numpy, at ~0.6x
            # pyarrow's CPU and ~half its bytes; the same schema and values for readers.
            segmentfile.write_file(stored, tmp, self.compression)
            return
        pq.write_table(
            stored,
            str(tmp),
            compression=self.compression,
            compression_level=self.compression_level,
            row_group_size=self.row_group_rows,
            # Dictionary encoding costs the writer about half again as much CPU for half the
            # size; raw segments are optimised for ingest (compaction may re-encode them). The
            # enrichment names are the exception: plain, they cost as much and take 10 times
            # the bytes.
            use_dictionary=_NAME_COLUMNS,
            # Integers byte-stream-split: their high bytes, nearly constant, become runs that
            # LZ4 passes over quickly, so the writer spends ~20 % less CPU for a third fewer
            # bytes than PLAIN (docs/performance.md, "Ingest CPU per flow"). An encoding, not a
            # type: readers (DuckDB, pyarrow) see the same schema.
            column_encoding=_INTEGER_ENCODING,
            # One page per ~8 MiB of column: fewer page headers and compressor calls.
            data_page_size=DATA_PAGE_BYTES,
            write_statistics=["time_received", "time_start", "time_end"],
            # Without pyarrow's schema in the footer, so the names read back as text
            # whichever way they were written (dictionary or not); the Parquet types say the
            # rest (unsigned widths, 16-byte addresses).
            store_schema=False,
        )

    def remove_stale_temporaries(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Delete temporaries left by a crash (any writer), once surely abandoned."""
        removed = 0
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than
        for tmp in self.root.glob(f"*/.*{TMP_SUFFIX}"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def idle(self) -> None:
        """Nothing to do between batches (the ClickHouse writer replays its spool here)."""

    def close(self) -> None:
        """Nothing held between writes."""


class StoreWriter(Protocol):
    """What the workers' :class:`BackgroundWriter` needs of a store: :class:`SegmentWriter`
    (Parquet) or :class:`~lanalyze.flows.store.clickhouse.writer.ClickHouseWriter`."""

    writer_id: str
    schema: pa.Schema
    stats: StoreStats

    def write(self, batches: Sequence[pa.RecordBatch] | pa.Table) -> Sequence[object]: ...

    def idle(self) -> None: ...

    def close(self) -> None: ...

    def remove_stale_temporaries(self) -> int: ...


IDLE_SECONDS = 1.0
"""How often the writer thread calls ``idle()`` when no batch comes (spool replay)."""

_STOP = object()


class BackgroundWriter:
    """A :class:`SegmentWriter` in its own thread behind a bounded queue.

    ``submit`` blocks only when ``max_pending`` segments are already waiting (a disk slower
    than the network for that long); the kernel's receive buffer absorbs that pause. A failed
    write (disk full, permissions) is logged and counted, and its rows are dropped rather
    than retried forever, so ingest continues once the disk recovers.
    """

    def __init__(self, writer: StoreWriter, max_pending: int = 3) -> None:
        self.writer = writer
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(
            target=self._run, name=f"flow-store-{writer.writer_id}", daemon=True
        )
        self._started = False

    @property
    def stats(self) -> StoreStats:
        # A copy: the counters are plain ints updated by the writer thread only.
        return StoreStats(**vars(self.writer.stats))

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def submit(self, batches: list[pa.RecordBatch]) -> None:
        if batches:
            self._queue.put(batches)

    def close(self, timeout: float | None = None) -> None:
        """Write everything submitted, then stop the thread."""
        if not self._started:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.writer.close()

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                try:
                    self.writer.idle()
                except OSError as exc:
                    log.error(
                        "flows.store_idle_failed",
                        extra={"writer": self.writer.writer_id, "error": str(exc)},
                    )
                continue
            if item is _STOP:
                return
            assert isinstance(item, list)
            try:
                self.writer.write(pa.Table.from_batches(item, schema=self.writer.schema))
            except (OSError, pa.ArrowException) as exc:
                rows = sum(batch.num_rows for batch in item)
                self.writer.stats.errors += 1
                self.writer.stats.dropped_rows += rows
                log.error(
                    "flows.store_failed",
                    extra={"writer": self.writer.writer_id, "rows": rows, "error": str(exc)},
                )
