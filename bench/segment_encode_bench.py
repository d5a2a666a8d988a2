"""CPU and bytes per flow of encoding one raw segment: the numpy encoder against pyarrow's.

One segment (``--rows`` flows of ``ingest_bench.py``'s v5 or IPFIX datagrams, decoded in
25,000-flow batches as a worker at 0.5 M flows/s makes them) is encoded alternately by
:mod:`lanalyze.flows.store.segmentfile` (what the collector uses) and by pyarrow with the
store's settings (what it used before, and still uses for segments with enrichment names);
``time.thread_time`` per flow, the median of ``--runs`` writes each, and the file size.

    .venv/bin/python bench/segment_encode_bench.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

try:
    from bench.ingest_bench import ipfix_datagrams, ipfix_template, v5_datagrams
except ModuleNotFoundError:  # run as a script: bench/ is sys.path[0]
    from ingest_bench import ipfix_datagrams, ipfix_template, v5_datagrams  # type: ignore[no-redef]
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lanalyze.flows.decode import FlowDecoder, Packet
from lanalyze.flows.recvmmsg import SLOT_STRIDE
from lanalyze.flows.store import segmentfile
from lanalyze.flows.store import writer as store_writer


def segment(fmt: str, rows: int) -> pa.Table:
    per = 30 if fmt == "v5" else 25
    pool = v5_datagrams(2048, 1) if fmt == "v5" else ipfix_datagrams(2048, 1)
    decoder = FlowDecoder()
    sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    if fmt == "ipfix":
        decoder.decode([Packet(ipfix_template(), source, 0) for source in sources])
    count = 25_000 // per
    slots = np.zeros((count, SLOT_STRIDE), dtype=np.uint8)
    codes = np.arange(count) % len(sources)
    lengths = np.full(count, len(pool[0]))
    batches, total, sent = [], 0, 0
    while total < rows:
        for index in range(count):
            data = pool[(sent + index) % len(pool)]
            slots[index, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        sent += count
        batch = decoder.decode_rows(slots, lengths, codes, sources, time.time_ns() // 10**6)
        batches.append(batch.to_record_batch())
        total += batch.rows
    return store_writer.stored_names(
        pa.Table.from_batches(batches, schema=store_writer.batch_schema())
    )


def by_pyarrow(table: pa.Table, path: Path) -> None:
    """The store's pyarrow settings (SegmentWriter._write_file's fallback)."""
    pq.write_table(
        table,
        str(path),
        compression="lz4",
        use_dictionary=store_writer._NAME_COLUMNS,
        column_encoding=store_writer._INTEGER_ENCODING,
        data_page_size=store_writer.DATA_PAGE_BYTES,
        write_statistics=["time_received", "time_start", "time_end"],
        store_schema=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="v5,ipfix")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segment-encode-") as work:
        path = Path(work) / "segment.parquet"
        for fmt in args.formats.split(","):
            table = segment(fmt, args.rows)
            rows = table.num_rows
            spent: dict[str, list[float]] = {"numpy": [], "pyarrow": []}
            size: dict[str, int] = {}
            for _ in range(args.runs):
                for name, times in spent.items():
                    started = time.thread_time()
                    if name == "numpy":
                        segmentfile.write_file(table, path, "lz4")
                    else:
                        by_pyarrow(table, path)
                    times.append((time.thread_time() - started) / rows * 1e6)
                    size[name] = path.stat().st_size
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            ours, before = (statistics.median(spent[k]) for k in ("numpy", "pyarrow"))
            print(
                f"{fmt}: {rows} flows, encode µs CPU/flow numpy {ours:.3f} "
                f"({size['numpy'] / rows:.1f} bytes/flow), pyarrow {before:.3f} "
                f"({size['pyarrow'] / rows:.1f} bytes/flow), ratio {ours / before:.2f} "
                f"(load {load})",
                flush=True,
            )


if __name__ == "__main__":
    main()
