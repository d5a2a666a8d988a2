"""The rollup maintainer's memory stays bounded in bytes, whatever the backlog."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from lanalyze.flows.config import RollupConfig
from lanalyze.flows.query import reports
from lanalyze.flows.store.layout import read_manifest
from lanalyze.flows.store.rollup import RollupMaintainer
from lanalyze.flows.store.rollup_aggregate import WORK_BYTES_PER_ROW, summarise, summarise_files
from lanalyze.flows.store.synthetic import random_flows, to_table, write_flows

HOUR = 3_600_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (24 * HOUR)


def test_sums_hold_no_more_buffer_than_their_rows_need() -> None:
    """group_by's output chunks are slices of one buffer; the address cast used to copy that
    whole buffer per chunk (memory quadratic in the rows summed)."""
    flows = to_table(
        random_flows(200_000, T0, T0 + 4 * HOUR, seed=5, sources=20_000, destinations=20_000)
    )
    sums = summarise(flows)
    for name, table in sums.items():
        # Buffers the table keeps alive, against the bytes its rows use: equal but for
        # a little padding and validity bitmaps.
        assert table.get_total_buffer_size() <= 1.1 * table.nbytes + 4096, name
    assert sums["src_addr"].schema.field("src_addr").type == pa.binary()
    assert summarise_files([]).rows == 0


def test_a_backlog_many_times_the_budget_is_rolled_up_within_it(tmp_path: Path) -> None:
    """The round's own count of what it held (chunks being summed, estimated from their rows;
    sums not written yet, by their buffers) stays under flows.rollup.max_memory on a backlog
    whose work is many times that, and the answers equal the raw flows'."""
    budget = 4 * 1024 * 1024
    columns = random_flows(60_000, T0, T0 + 6 * HOUR, seed=7, sources=5_000, sampling=(1, 10))
    write_flows(tmp_path, columns, segment_ms=5 * 60_000)
    assert 5 * budget < 60_000 * WORK_BYTES_PER_ROW
    made = RollupMaintainer(RollupConfig(max_memory=budget, close_after=86400), tmp_path)
    try:
        assert made.run_once(now=(T0 + 6 * HOUR) / 1000)["rolled_files"] == 72
        assert 0 < made.peak_held_bytes <= budget
        # The sums were written out several times: hours got more than one part ...
        parts = read_manifest(tmp_path).parts["1h"]["summary"]
        assert max(len(names) for names in parts.values()) > 1
        # ... which the rounds after the hours close merge as any.
        made.config = RollupConfig(max_memory=budget)
        made.run_once(now=(T0 + 8 * HOUR) / 1000)
        parts = read_manifest(tmp_path).parts["1h"]["summary"]
        assert all(len(names) == 1 for names in parts.values())
        for by, flt in (("srcip", None), ("app", "proto tcp"), ("exporter,inif,outif", None)):
            for since, until in ((T0, T0 + 6 * HOUR), (T0 + 1_234_567, T0 + 5 * HOUR + 98_765)):
                rolled = reports.top(tmp_path, by, since=since, until=until, limit=0, filter=flt)
                raw = reports.top(
                    tmp_path, by, since=since, until=until, limit=0, filter=flt, use_rollups=False
                )
                assert rolled.rows == raw.rows
                assert rolled.total == raw.total
    finally:
        made.release()
