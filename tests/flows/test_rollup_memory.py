"""The rollup maintainer's memory stays bounded in bytes, whatever the backlog."""

from __future__ import annotations

import pyarrow as pa

from lanalyze.flows.store.rollup_aggregate import summarise, summarise_files
from lanalyze.flows.store.synthetic import random_flows, to_table

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000


def test_sums_hold_no_more_buffer_than_their_rows_need() -> None:
    """group_by's output chunks are slices of one buffer; the address cast used to copy that
    whole buffer per chunk (memory quadratic in the rows summed)."""
    flows = to_table(
        random_flows(200_000, T0, T0 + 4 * 3_600_000, seed=5, sources=20_000, destinations=20_000)
    )
    sums = summarise(flows)
    for name, table in sums.items():
        # Buffers the table keeps alive, against the bytes its rows use: equal but for
        # a little padding and validity bitmaps.
        assert table.get_total_buffer_size() <= 1.1 * table.nbytes + 4096, name
    assert sums["src_addr"].schema.field("src_addr").type == pa.binary()
    assert summarise_files([]).rows == 0
