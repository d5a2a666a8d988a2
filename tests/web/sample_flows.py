"""Test flows written straight into the store layout the collector uses.

``<data_dir>/flows/raw/<YYYYMMDDHH>/<first_ms>-<writer>-<seq>.parquet``, built with the
catalogue's own batch helpers so the schema is the real one.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lanalyze.flows import catalogue

HOUR_MS = 3_600_000
CLIENTS = [f"10.0.0.{i}" for i in range(1, 21)]
SERVERS = ["192.0.2.10", "192.0.2.20", "198.51.100.5", "203.0.113.9", "2001:db8::1"]
EXPORTERS = ["192.168.1.1", "192.168.1.2"]
SERVICES = [(6, 443), (6, 80), (17, 53), (6, 22), (17, 123), (6, 25)]
TOP_TALKER = "10.0.0.7"


def mapped(text: str) -> bytes:
    address = ipaddress.ip_address(text)
    if address.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    return address.packed


def write_flows(data_dir: Path, columns: dict[str, np.ndarray], writer: str = "t") -> int:
    """Split ``columns`` by hour of ``time_received`` and write one segment per hour."""
    hours = columns["time_received"] // HOUR_MS
    written = 0
    for seq, hour in enumerate(np.unique(hours)):
        mask = hours == hour
        part = {name: values[mask] for name, values in columns.items()}
        order = np.argsort(part["time_received"], kind="stable")
        part = {name: values[order] for name, values in part.items()}
        first = int(part["time_received"][0])
        name = time.strftime("%Y%m%d%H", time.gmtime(first // 1000))
        directory = data_dir / "flows" / "raw" / name
        directory.mkdir(parents=True, exist_ok=True)
        batch = catalogue.to_record_batch(part)
        pq.write_table(
            pa.Table.from_batches([batch]), directory / f"{first}-{writer}-{seq}.parquet"
        )
        written += len(part["bytes"])
    return written


def sample_flows(now_ms: int, rows: int = 4000, span_ms: int = 2 * HOUR_MS, seed: int = 7):
    """Clients talking to a few servers over the last ``span_ms``; 10.0.0.7 talks most."""
    rng = np.random.default_rng(seed)
    batch = catalogue.empty_batch(rows)
    received = now_ms - rng.integers(1000, span_ms, rows, dtype=np.int64)
    batch["time_received"][:] = received
    duration = rng.integers(10, 30_000, rows, dtype=np.int64)
    batch["time_end"][:] = received - 500
    batch["time_start"][:] = received - 500 - duration
    clients = np.array([mapped(c) for c in CLIENTS], dtype="S16")
    servers = np.array([mapped(s) for s in SERVERS], dtype="S16")
    exporters = np.array([mapped(e) for e in EXPORTERS], dtype="S16")
    client_index = rng.integers(0, len(CLIENTS), rows)
    client_index[rng.random(rows) < 0.3] = CLIENTS.index(TOP_TALKER)
    server_index = rng.integers(0, len(SERVERS), rows)
    service_index = rng.integers(0, len(SERVICES), rows)
    protos = np.array([s[0] for s in SERVICES], dtype=np.uint8)
    ports = np.array([s[1] for s in SERVICES], dtype=np.uint16)
    outbound = rng.random(rows) < 0.5
    client = clients[client_index]
    server = servers[server_index]
    batch["src_addr"][:] = np.where(outbound, client, server)
    batch["dst_addr"][:] = np.where(outbound, server, client)
    ephemeral = rng.integers(32768, 60999, rows).astype(np.uint16)
    batch["src_port"][:] = np.where(outbound, ephemeral, ports[service_index])
    batch["dst_port"][:] = np.where(outbound, ports[service_index], ephemeral)
    batch["protocol"][:] = protos[service_index]
    batch["ip_version"][:] = np.where(server_index == len(SERVERS) - 1, 6, 4)
    batch["exporter"][:] = exporters[rng.integers(0, len(EXPORTERS), rows)]
    batch["in_if"][:] = np.where(outbound, 1, 2)
    batch["out_if"][:] = np.where(outbound, 2, 1)
    batch["packets"][:] = rng.integers(1, 200, rows)
    batch["bytes"][:] = batch["packets"] * rng.integers(60, 1500, rows)
    batch["tcp_flags"][:] = np.where(protos[service_index] == 6, 0x1B, 0)
    return batch


def write_sample(data_dir: Path, now_ms: int | None = None, rows: int = 4000) -> int:
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return write_flows(data_dir, sample_flows(now_ms, rows))


def write_exporters_file(data_dir: Path, now_ms: int | None = None) -> None:
    """The collector's exporters.json, as ``lanalyze flows collect`` writes it."""
    import json

    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rows = [
        {
            "exporter": "192.168.1.1",
            "observation_domain": 0,
            "version": 9,
            "packets": 1200,
            "flows": 36000,
            "sequence_gaps": 3,
            "decode_errors": 0,
            "unknown_template_records": 12,
            "last_seen_ms": now_ms - 2000,
        },
        {
            "exporter": "192.168.1.2",
            "observation_domain": 1,
            "version": 10,
            "packets": 800,
            "flows": 24000,
            "sequence_gaps": 0,
            "decode_errors": 2,
            "unknown_template_records": 0,
            "last_seen_ms": now_ms - 3_600_000,
        },
    ]
    data = {
        "written_ms": now_ms,
        "started_ms": now_ms - 86_400_000,
        "exporters": rows,
        "kernel_drops": {"0.0.0.0:2055": 17},
        "store": {},
        "datagrams": 2000,
    }
    path = data_dir / "flows" / "exporters.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
