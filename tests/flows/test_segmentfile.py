"""Raw segments encoded by hand (flows/store/segmentfile.py) read as pyarrow's files do."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lanalyze.flows import catalogue
from lanalyze.flows.store import segmentfile
from lanalyze.flows.store.writer import SegmentWriter, stored_names

HOUR = 1_700_000_000_000 // 3_600_000 * 3_600_000


def flows(rows: int, seed: int = 7) -> pa.RecordBatch:
    """Every catalogue column with values over its whole range (both ends included)."""
    rng = np.random.default_rng(seed)
    columns = catalogue.empty_batch(rows)
    for column in catalogue.COLUMNS:
        if column.kind in ("str", "ip"):
            continue
        dtype = column.numpy_dtype
        top = np.iinfo(dtype).max
        values = rng.integers(0, top, rows, dtype=dtype, endpoint=True)
        values[:2] = (0, top)
        columns[column.name] = values
    columns["time_received"] = HOUR + np.sort(rng.integers(0, 1000, rows)).astype(np.uint64)
    columns["time_start"] = columns["time_received"] - np.uint64(5000)
    columns["time_end"] = columns["time_received"] - np.uint64(1)
    for name in ("src_addr", "dst_addr", "exporter", "next_hop", "bgp_next_hop"):
        columns[name] = rng.integers(0, 256, (rows, 16), dtype=np.uint8).view("S16").ravel()
    return catalogue.to_record_batch(columns)


def by_pyarrow(table: pa.Table, path: Path) -> None:
    """The store's pyarrow encoding (the path every other segment takes)."""
    pq.write_table(table, str(path), compression="lz4", store_schema=False)


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_collector_segment_reads_as_pyarrow_encoding(tmp_path: Path, compression: str) -> None:
    batches = [flows(1000, seed) for seed in range(3)]
    writer = SegmentWriter(tmp_path, "t", compression=compression)  # type: ignore[arg-type]
    (path,) = writer.write(batches)
    assert pq.read_metadata(path).created_by == segmentfile.CREATED_BY.decode()
    expected = stored_names(pa.Table.from_batches(batches))
    reference = tmp_path / "reference.parquet"
    by_pyarrow(expected, reference)
    got = pq.read_table(path)
    assert got.schema.equals(pq.read_table(reference).schema)
    assert got.equals(pq.read_table(reference))
    assert got.num_rows == 3000 and got.column("extra").null_count == 3000
    # DuckDB: the same column types and the same rows.
    describe = "describe select * from read_parquet(?)"
    assert (
        duckdb.execute(describe, [str(path)]).fetchall()
        == duckdb.execute(describe, [str(reference)]).fetchall()
    )
    rows = "select * from read_parquet(?) order by all"
    assert (
        duckdb.execute(rows, [str(path)]).fetchall()
        == duckdb.execute(rows, [str(reference)]).fetchall()
    )


def test_time_columns_carry_statistics_readers_prune_by(tmp_path: Path) -> None:
    (path,) = SegmentWriter(tmp_path, "t", compression="lz4").write([flows(500)])
    table = pq.read_table(path)
    group = pq.read_metadata(path).row_group(0)
    names = table.column_names
    for name in segmentfile.STATISTICS:
        statistics = group.column(names.index(name)).statistics
        assert statistics is not None and statistics.has_min_max, name
        values = table.column(name).to_numpy()
        assert (statistics.min, statistics.max) == (int(values.min()), int(values.max()))
    assert group.column(names.index("bytes")).statistics is None
    last = int(table.column("time_received").to_numpy().max())
    count = "select count(*) from read_parquet(?) where time_received >= ?"
    assert duckdb.execute(count, [str(path), last + 1]).fetchone() == (0,)
    assert duckdb.execute(count, [str(path), last]).fetchone() != (0,)


def test_other_segments_keep_pyarrow(tmp_path: Path) -> None:
    """Enrichment names (dictionary pages), a filled ``extra`` column or another codec:
    pyarrow writes them, as before."""
    batch = flows(10)
    names = pa.array(["a"] * 10).dictionary_encode()
    labelled = batch.set_column(batch.schema.get_field_index("src_country"), "src_country", names)
    extra = batch.set_column(
        batch.schema.get_field_index("extra"), "extra", pa.array(['{"k":1}'] * 10)
    )
    cases = [
        (labelled, "lz4"),
        (pa.RecordBatch.from_arrays(extra.columns, schema=catalogue.batch_schema()), "lz4"),
        (batch, "zstd"),
    ]
    paths = []
    for index, (item, compression) in enumerate(cases):
        writer = SegmentWriter(tmp_path / str(index), "t", compression=compression)  # type: ignore[arg-type]
        (path,) = writer.write([item])
        assert "parquet-cpp" in (pq.read_metadata(path).created_by or ""), index
        assert pq.read_table(path).num_rows == 10
        paths.append(path)
    assert pq.read_table(paths[0]).column("src_country").to_pylist() == ["a"] * 10
    assert pq.read_table(paths[1]).column("extra").to_pylist() == ['{"k":1}'] * 10


def test_segments_over_the_page_bound_keep_pyarrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segmentfile, "MAX_ROWS", 99)
    (small,) = SegmentWriter(tmp_path / "a", "t", compression="lz4").write([flows(99)])
    (large,) = SegmentWriter(tmp_path / "b", "t", compression="lz4").write([flows(100)])
    assert pq.read_metadata(small).created_by == segmentfile.CREATED_BY.decode()
    assert "parquet-cpp" in (pq.read_metadata(large).created_by or "")
