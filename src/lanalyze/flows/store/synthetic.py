"""Synthetic raw flows for tests and benchmarks, stored through the real segment writer.

Flows come from a seeded random generator, vectorised with numpy, in catalogue columns; they
are stored by :class:`~lanalyze.flows.store.writer.SegmentWriter`, the collector's own
writer, so a test of the reports or the rollups fails when the writer does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lanalyze.flows import catalogue
from lanalyze.flows.store.writer import Compression, SegmentWriter

V4_PREFIX = np.frombuffer(b"\x00" * 10 + b"\xff\xff", dtype=np.uint8)


def v4_addresses(values: np.ndarray) -> np.ndarray:
    """uint32 IPv4 addresses -> 16-byte IPv4-mapped ``S16`` array."""
    out = np.zeros((len(values), 16), dtype=np.uint8)
    out[:, :12] = V4_PREFIX
    out[:, 12:] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out.view("S16").reshape(-1)


def random_flows(
    rows: int,
    start_ms: int,
    end_ms: int,
    *,
    seed: int = 1,
    sources: int = 256,
    destinations: int = 256,
    exporters: int = 2,
    sampling: tuple[int, ...] = (1,),
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = catalogue.empty_batch(rows)
    batch["time_received"][:] = np.sort(rng.integers(start_ms, end_ms, rows, dtype=np.uint64))
    batch["time_start"][:] = batch["time_received"] - rng.integers(0, 60_000, rows).astype(
        np.uint64
    )
    batch["time_end"][:] = batch["time_received"]
    batch["exporter"][:] = v4_addresses(
        np.uint32(0xC0000200) + rng.integers(1, exporters + 1, rows).astype(np.uint32)
    )
    batch["src_addr"][:] = v4_addresses(
        np.uint32(0x0A000000) + rng.integers(0, sources, rows).astype(np.uint32)
    )
    batch["dst_addr"][:] = v4_addresses(
        np.uint32(0xC6336400) + rng.integers(0, destinations, rows).astype(np.uint32)
    )
    batch["protocol"][:] = rng.choice(
        np.array([6, 17, 1], dtype=np.uint8), rows, p=[0.7, 0.25, 0.05]
    )
    batch["src_port"][:] = rng.integers(1024, 65535, rows).astype(np.uint16)
    batch["dst_port"][:] = rng.choice(np.array([443, 80, 53, 22, 25, 8080], dtype=np.uint16), rows)
    batch["tcp_flags"][:] = rng.choice(
        np.array([0x02, 0x12, 0x18, 0x11, 0x1B], dtype=np.uint8), rows
    )
    batch["tos"][:] = rng.choice(np.array([0, 0, 0, 0x28, 0xB8], dtype=np.uint8), rows)
    batch["packets"][:] = rng.integers(1, 100, rows).astype(np.uint64)
    batch["bytes"][:] = batch["packets"] * rng.integers(40, 1500, rows).astype(np.uint64)
    batch["in_if"][:] = rng.integers(1, 5, rows).astype(np.uint32)
    batch["out_if"][:] = rng.integers(1, 5, rows).astype(np.uint32)
    batch["src_as"][:] = rng.choice(np.array([0, 64512, 65000], dtype=np.uint32), rows)
    batch["dst_as"][:] = rng.choice(np.array([0, 15169, 13335], dtype=np.uint32), rows)
    batch["ip_version"][:] = 4
    batch["sampling_rate"][:] = rng.choice(np.array(sampling, dtype=np.uint32), rows)
    return batch


def to_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """Catalogue columns (as :func:`random_flows` makes them) as an Arrow table; text columns
    given as object arrays of str or None (enrichment names a test sets) are kept, the others
    null."""
    labels = {
        column.name: pa.array(columns[column.name], pa.string())
        for column in catalogue.COLUMNS
        if column.kind == "str" and column.name in columns
    }
    return pa.Table.from_batches([catalogue.to_record_batch(columns, labels=labels)])


def write_flows(
    flows: Path,
    columns: dict[str, np.ndarray],
    *,
    segment_ms: int = 60_000,
    writer: str = "synth",
    compression: Compression = "zstd",
) -> list[Path]:
    """Store flows as the collector does: one segment per ``segment_ms`` of receive time, each
    written by :class:`~lanalyze.flows.store.writer.SegmentWriter` into the flow directory
    ``flows``. Returns the segments' paths."""
    store = SegmentWriter(flows, writer, compression=compression)
    times = columns["time_received"]
    order = np.argsort(times, kind="stable")
    sorted_columns = {name: values[order] for name, values in columns.items()}
    times = sorted_columns["time_received"]
    edges = np.flatnonzero(np.diff(times // np.uint64(segment_ms))) + 1
    paths: list[Path] = []
    for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), len(times)], strict=True):
        if hi > lo:
            part = {name: values[lo:hi] for name, values in sorted_columns.items()}
            paths += store.write(to_table(part))
    return paths
