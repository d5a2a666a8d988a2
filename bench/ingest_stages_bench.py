"""CPU per flow of each stage of the collector's ingest path, offline and repeatable.

The datagrams of ``ingest_bench.py`` (NetFlow v5, 30 records; IPFIX, 25) are fed through the
worker's own code without sockets: ``FlowDecoder.decode_rows`` on datagrams laid out as the
``recvmmsg`` receiver leaves them (``--path packets``: ``Packet`` construction and
``FlowDecoder.decode``, the ``recvfrom_into`` fallback's path), the
Arrow conversion (``DecodedBatch.to_record_batch``), and the store (``SegmentWriter.write``:
Parquet encoding, then fsync, rename and directory fsync, timed apart). Batches are the size a
worker sees at ``--rate`` flows/s with its gather (``BATCH_GATHER_SECONDS``); a segment holds
``--segment-rows`` flows (the worker flushes every second or at ``flows.segment_max_rows``).

Figures are ``time.thread_time`` (this thread's CPU, user + system) per flow, the median of
``--runs`` runs: other processes on the machine barely move them, unlike the loss point of
``ingest_bench.py``. The peer's figure is nfcapd's CPU per flow measured by
``ingest_bench.py`` (its own process, receive included), given with ``--peer-us``.

    .venv/bin/python bench/ingest_stages_bench.py --runs 5

The receive path (the system calls, ~0.05 µs a v5 flow with ``recvmmsg``) is not in these
figures; ``--receive`` measures it apart, over loopback.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

try:
    from bench import enrich_data
    from bench.ingest_bench import ipfix_datagrams, ipfix_template, v5_datagrams
except ModuleNotFoundError:  # run as a script: bench/ is sys.path[0]
    import enrich_data  # type: ignore[no-redef]
    from ingest_bench import ipfix_datagrams, ipfix_template, v5_datagrams  # type: ignore[no-redef]
import numpy as np

from lanalyze.flows import catalogue
from lanalyze.flows.config import FlowsConfig
from lanalyze.flows.decode import FlowDecoder, Packet
from lanalyze.flows.enrich import Enricher
from lanalyze.flows.receive import BatchReceiver, open_udp
from lanalyze.flows.recvmmsg import SLOT_STRIDE
from lanalyze.flows.store.writer import SegmentWriter
from lanalyze.flows.worker import BATCH_GATHER_SECONDS, GC_THRESHOLD

STAGES = ("decode", "enrich", "arrow", "encode", "fsync")


class TimedWriter(SegmentWriter):
    """The segment writer with its encoding and its durability steps timed apart."""

    encode_seconds = 0.0
    fsync_seconds = 0.0

    def _write_file(self, table: object, tmp: Path) -> None:  # type: ignore[override]
        started = time.thread_time()
        super()._write_file(table, tmp)  # type: ignore[arg-type]
        self.encode_seconds += time.thread_time() - started


def run_once(
    fmt: str,
    flows: int,
    batch_flows: int,
    segment_rows: int,
    directory: Path,
    compression: str,
    path: str = "rows",
    enricher: Enricher | None = None,
) -> dict[str, float]:
    per_datagram = 30 if fmt == "v5" else 25
    pool = v5_datagrams(2048, 1) if fmt == "v5" else ipfix_datagrams(2048, 1)
    decoder = FlowDecoder()
    writer = TimedWriter(directory, "bench", compression=compression)  # type: ignore[arg-type]
    per_batch = max(1, batch_flows // per_datagram)
    sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    if fmt == "ipfix":
        decoder.decode([Packet(ipfix_template(), source, 0) for source in sources])
    batch_sources = [sources[i % len(sources)] for i in range(per_batch)]
    spent = dict.fromkeys(STAGES, 0.0)
    pending: list[object] = []
    pending_rows = 0
    stored = 0
    sent = 0
    fsync_total = 0.0
    rows = np.zeros((per_batch, SLOT_STRIDE), dtype=np.uint8)
    codes = np.arange(per_batch, dtype=np.int64) % len(sources)
    lengths = np.array([len(pool[0])] * per_batch, dtype=np.int64)
    while sent < flows // per_datagram:
        datagrams = [pool[(sent + i) % len(pool)] for i in range(per_batch)]
        received = time.time_ns() // 1_000_000
        sent += per_batch
        if path == "rows":
            # What recvmmsg does (the kernel's copy, not timed here).
            for index, data in enumerate(datagrams):
                rows[index, : len(data)] = np.frombuffer(data, dtype=np.uint8)
            lengths[:] = [len(data) for data in datagrams]
            t0 = time.thread_time()
            batch = decoder.decode_rows(rows, lengths, codes, sources, received)
        else:
            views = list(map(memoryview, datagrams))
            t0 = time.thread_time()
            repeat = itertools.repeat(received, per_batch)
            batch = decoder.decode(list(map(Packet, views, batch_sources, repeat)))
        t1 = time.thread_time()
        labels = enricher.enrich(batch.columns) if enricher is not None else None
        te = time.thread_time()
        pending.append(catalogue.to_record_batch(batch.columns, batch.extra, labels))
        pending_rows += batch.rows
        t2 = time.thread_time()
        spent["decode"] += t1 - t0
        spent["enrich"] += te - t1
        spent["arrow"] += t2 - te
        if pending_rows >= segment_rows:
            writer.encode_seconds = 0.0
            t3 = time.thread_time()
            writer.write(pending)  # type: ignore[arg-type]
            total = time.thread_time() - t3
            spent["encode"] += writer.encode_seconds
            fsync_total += total - writer.encode_seconds
            stored += pending_rows
            pending, pending_rows = [], 0
    spent["fsync"] = fsync_total
    return {stage: seconds / max(1, stored) * 1e6 for stage, seconds in spent.items()}


def receive_cost(multi: bool, datagrams: int = 8000, rounds: int = 5) -> float:
    """µs of this thread's CPU per v5 datagram to drain a loopback socket with the worker's
    receiver (``recvmmsg`` or ``recvfrom_into``), the queue filled beforehand by 4 sources."""
    sock = open_udp("127.0.0.1:0", "bench", receive_buffer=64 * 2**20)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    payload = v5_datagrams(1, 1)[0]
    receiver = BatchReceiver([sock], multi=multi)
    spent: list[float] = []
    try:
        for _ in range(rounds):
            for index in range(datagrams):
                senders[index % 4].sendto(payload, sock.getsockname())
            got = 0
            started = time.thread_time()
            while True:
                batch = receiver.receive()
                if not batch.count:
                    break
                got += batch.count
                if not multi:
                    batch.sources  # noqa: B018 (what the fallback hands on)
            spent.append((time.thread_time() - started) / max(1, got) * 1e6)
    finally:
        sock.close()
        for sender in senders:
            sender.close()
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="v5,ipfix")
    parser.add_argument("--flows", type=int, default=3_000_000, help="flows per run")
    parser.add_argument("--rate", type=float, default=1.0, help="M flows/s per worker")
    parser.add_argument("--segment-rows", type=int, default=500_000)
    parser.add_argument("--compression", default="lz4")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--path", choices=("rows", "packets"), default="rows", help="decoder entry point"
    )
    parser.add_argument("--peer-us", default="0.27,0.44", help="nfcapd µs/flow (v5,ipfix)")
    parser.add_argument(
        "--receive", action="store_true", help="also the receive path's CPU, over loopback"
    )
    parser.add_argument(
        "--enrich", action="store_true", help="with every kind of enrichment (issue 16)"
    )
    args = parser.parse_args()
    enricher = None
    if args.enrich:
        import tomllib

        flows = FlowsConfig.model_validate(tomllib.loads(enrich_data.toml())["flows"])
        enricher = Enricher(flows.enrich, flows.networks)
        enricher.start()
    if args.receive:
        for multi in (True, False):
            cost = receive_cost(multi)
            name = "recvmmsg" if multi else "recvfrom_into"
            print(f"receive ({name}): {cost:.2f} µs CPU/datagram, {cost / 30:.3f} µs/v5 flow")
    batch_flows = int(args.rate * 1e6 * BATCH_GATHER_SECONDS)
    # As a worker does (FlowWorker.run).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)
    peers = dict(zip(("v5", "ipfix"), (float(x) for x in args.peer_us.split(",")), strict=True))
    print(f"batch {batch_flows} flows, segment {args.segment_rows} rows, {args.compression}")
    for fmt in args.formats.split(","):
        rows: list[dict[str, float]] = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="stages-", dir=os.environ.get("TMPDIR")) as d:
                rows.append(
                    run_once(
                        fmt,
                        args.flows,
                        batch_flows,
                        args.segment_rows,
                        Path(d),
                        args.compression,
                        args.path,
                        enricher,
                    )
                )
        medians = {stage: statistics.median(r[stage] for r in rows) for stage in STAGES}
        total = sum(medians.values())
        detail = ", ".join(f"{stage} {medians[stage]:.3f}" for stage in STAGES)
        print(f"{fmt}: {detail} -> ours {total:.3f} µs CPU/flow")
        peer = peers[fmt]
        print(f"  nfcapd {peer:.2f} µs/flow (receive included), ours/nfcapd {total / peer:.2f}")


if __name__ == "__main__":
    main()
