"""The segment writer: the on-disk contract the query side relies on."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lanalyze.datadir import atomic_write_bytes
from lanalyze.flows import catalogue
from lanalyze.flows.store.layout import HOUR_MS, hour_name
from lanalyze.flows.store.paths import flow_dir, raw_dir
from lanalyze.flows.store.writer import BackgroundWriter, SegmentWriter

NAME = re.compile(r"^(\d+)-([A-Za-z0-9]+)-(\d+)\.parquet$")


def flows_batch(received_ms: list[int]) -> pa.RecordBatch:
    rows = len(received_ms)
    columns = catalogue.empty_batch(rows)
    columns["time_received"][:] = received_ms
    columns["bytes"][:] = np.arange(rows) + 100
    columns["packets"][:] = 1
    addresses = np.zeros((rows, 16), np.uint8)
    addresses[:, 10:12] = 0xFF
    addresses[:, 12] = 10
    addresses[:, 15] = np.arange(rows) % 256
    columns["src_addr"] = addresses.view("S16").ravel()
    return catalogue.to_record_batch(columns)


def segments(data_dir: Path) -> list[Path]:
    return sorted(raw_dir(flow_dir(data_dir)).glob("*/*.parquet"))


def test_segment_is_named_placed_and_readable(data_dir: Path) -> None:
    now = 1_700_000_000_123
    writer = SegmentWriter(flow_dir(data_dir), "w0xabc")
    paths = writer.write([flows_batch([now, now + 5, now + 9])])
    assert paths == segments(data_dir)
    (path,) = paths
    assert path.parent.name == hour_name(now) == "2023111422"
    match = NAME.match(path.name)
    assert match and match.group(1) == str(now) and match.group(2) == "w0xabc"
    # The catalogue's schema, less the name columns no flow has (enrichment not configured).
    expected = catalogue.arrow_schema()
    for name in catalogue.LABEL_COLUMNS:
        expected = expected.remove(expected.get_field_index(name))
    assert pq.read_schema(path).equals(expected)
    total = (
        duckdb.connect()
        .execute(f"select count(*), sum(bytes) from read_parquet('{path}')")
        .fetchall()[0]
    )
    assert total == (3, 100 + 101 + 102)
    assert writer.stats.rows == 3 and writer.stats.segments == 1
    assert writer.stats.bytes == path.stat().st_size
    assert not list(path.parent.glob(".*"))  # no temporary left behind


def test_batch_straddling_an_hour_is_split(data_dir: Path) -> None:
    start = (1_700_000_000_000 // HOUR_MS + 1) * HOUR_MS - 2
    writer = SegmentWriter(flow_dir(data_dir), "w1")
    paths = writer.write([flows_batch([start, start + 1, start + 2, start + 3])])
    assert len(paths) == 2
    for path in paths:
        received = pq.read_table(path).column("time_received").to_pylist()
        assert {hour_name(ms) for ms in received} == {path.parent.name}
    assert sum(pq.read_metadata(p).num_rows for p in paths) == 4
    names = [NAME.match(p.name) for p in paths]
    assert [int(m.group(3)) for m in names if m] == [0, 1]


def test_background_writer_stores_everything_submitted_before_close(data_dir: Path) -> None:
    writer = BackgroundWriter(SegmentWriter(flow_dir(data_dir), "bg"), max_pending=2)
    writer.start()
    now = int(time.time() * 1000)
    for i in range(6):
        writer.submit([flows_batch([now + i] * 10)])
    writer.close()
    assert writer.stats.rows == 60
    rows = (
        duckdb.connect()
        .execute(f"select count(*) from read_parquet('{raw_dir(flow_dir(data_dir))}/*/*.parquet')")
        .fetchall()[0]
    )
    assert rows == (60,)


def test_failed_write_is_counted_and_dropped(data_dir: Path) -> None:
    # A file where the store's directory should be: every write fails with an OSError.
    (data_dir / "flows").write_text("not a directory")
    writer = BackgroundWriter(SegmentWriter(flow_dir(data_dir), "bad"))
    writer.start()
    writer.submit([flows_batch([int(time.time() * 1000)] * 7)])
    writer.close()
    assert writer.stats.errors == 1 and writer.stats.dropped_rows == 7


def test_stale_temporaries_are_removed_fresh_ones_kept(data_dir: Path) -> None:
    writer = SegmentWriter(flow_dir(data_dir), "w0")
    hour = raw_dir(flow_dir(data_dir)) / "2024010100"
    hour.mkdir(parents=True)
    stale = hour / ".1-w9-000000.parquet.tmp"
    fresh = hour / ".2-w8-000000.parquet.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert writer.remove_stale_temporaries() == 1
    assert not stale.exists() and fresh.exists()


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_segment_stores_dictionary_names_as_text_and_omits_empty_ones(data_dir: Path) -> None:
    """The ingest path's dictionary columns are stored as text (read back as strings by
    pyarrow and DuckDB): chunks with differing dictionaries, a large dictionary cut to what
    the segment uses, nulls; a name column null in every row is left out of the segment."""
    from lanalyze.flows.enrich.names import NameCodes
    from lanalyze.flows.store.writer import COMPACT_DICTIONARY

    now = 1_700_000_000_123
    big = NameCodes.of([f"AS name {i}" for i in range(COMPACT_DICTIONARY * 4)])
    small = NameCodes.of(["office", None, "lan"])
    batches = []
    for part, (as_index, net_index) in enumerate(
        (([5, -1, 900], [0, 2, -1]), ([900, 7, 7], [1, 1, 0]))
    ):
        batch = flows_batch([now + 3 * part, now + 3 * part + 1, now + 3 * part + 2])
        columns = {name: batch.column(name) for name in batch.schema.names}
        columns["src_as_name"] = big.column(np.array(as_index))
        # The second batch's networks come from another table (a registry that started over).
        table = small if part == 0 else NameCodes.of(["lan", "office"])
        columns["src_net_name"] = table.column(np.array(net_index))
        batches.append(pa.RecordBatch.from_pydict(columns, schema=catalogue.batch_schema()))
    writer = SegmentWriter(flow_dir(data_dir), "w0xabc")
    (path,) = writer.write(batches)
    schema = pq.read_schema(path)
    assert schema.field("src_as_name").type == pa.string()
    assert "dst_as_name" not in schema.names and "src_country" not in schema.names
    table = pq.read_table(path)
    assert table.column("src_as_name").to_pylist() == [
        "AS name 5",
        None,
        "AS name 900",
        "AS name 900",
        "AS name 7",
        "AS name 7",
    ]
    assert table.column("src_net_name").to_pylist() == [
        "office",
        "lan",
        None,
        "office",
        "office",
        "lan",
    ]
    # Parquet's dictionary page holds only the names used (not the 1,024 of the table).
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    position = schema.get_field_index("src_as_name")
    assert metadata.column(position).total_uncompressed_size < 2_000
    rows = duckdb.connect().execute(
        f"select src_as_name, count(*) from read_parquet('{path}') group by all order by all"
    )
    assert rows.fetchall() == [("AS name 5", 1), ("AS name 7", 2), ("AS name 900", 2), (None, 1)]


def test_record_batch_shares_numpy_columns_and_converts_others() -> None:
    """Numpy columns in Arrow's layout become Arrow arrays over the same memory; any other
    column (a strided view, another integer width, a read-only shared array, 2-D address
    bytes) is converted to the same values as ``pa.array`` gives."""
    rows = 5
    columns = catalogue.empty_batch(rows)
    columns["bytes"] = np.arange(rows, dtype=np.uint64) * 1000
    columns["packets"] = np.arange(2 * rows, dtype=np.uint64)[::2]  # strided
    columns["src_port"] = np.arange(rows, dtype=np.int64) + 80  # another width
    columns["flows"].flags.writeable = False
    columns["src_addr"] = np.arange(rows * 16, dtype=np.uint8).reshape(rows, 16)
    columns["dst_addr"] = np.array([bytes([i]) * 16 for i in range(rows)], dtype="S16")
    batch = catalogue.to_record_batch(columns)
    assert batch.schema == catalogue.batch_schema()
    assert batch.column("bytes").to_pylist() == [0, 1000, 2000, 3000, 4000]
    assert batch.column("packets").to_pylist() == [0, 2, 4, 6, 8]
    assert batch.column("src_port").to_pylist() == [80, 81, 82, 83, 84]
    assert batch.column("flows").to_pylist() == [1] * rows
    assert batch.column("src_addr").to_pylist()[1] == bytes(range(16, 32))
    assert batch.column("dst_addr").to_pylist()[3] == b"\x03" * 16
    bytes_buffer = batch.column("bytes").buffers()[1]
    assert bytes_buffer is not None
    assert bytes_buffer.address == columns["bytes"].ctypes.data  # shared, not copied
