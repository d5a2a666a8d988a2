"""Decoder throughput: lanalyze's FlowDecoder vs the pure-Python ``netflow`` package.

Batches of ~1000 export datagrams, decoded in memory (no sockets): NetFlow v5 with 30 records
a datagram, and IPFIX with a softflowd-like template (IPv4 addresses, ports, protocol, flags,
ToS, IP version, 64-bit counters, millisecond start/end, interfaces: 56 bytes a record, 25
records a datagram), and sFlow v5 as switches send it (8 flow samples a datagram, each a
128-byte Ethernet/IPv4/TCP header and an extended switch record; the peer has no sFlow
decoder). Prints flows/s for the peer (``netflow``: the only maintained Python
library; it parses record by record into dicts), ours, and the ratio; each figure is the median
of ``--runs`` runs, in flows per second of this process's CPU time (``time.process_time``),
so that other processes competing for the two cores do not count against either side.

    .venv/bin/python bench/decode_bench.py --runs 5 [--path rows]

The machine is shared and noisy: compare figures from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from collections.abc import Callable

import numpy as np

from lanalyze.flows.decode import FlowDecoder, Packet

DATAGRAMS = 1000
EXPORT_SECS = 1_700_000_000
IPFIX_FIELDS = [
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (5, 1),
    (60, 1),
    (2, 8),
    (1, 8),
    (152, 8),
    (153, 8),
    (10, 4),
    (14, 4),
]
IPFIX_RECORDS = 25
IPFIX_DTYPE = np.dtype(
    [
        ("src", ">u4"),
        ("dst", ">u4"),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("proto", "u1"),
        ("flags", "u1"),
        ("tos", "u1"),
        ("version", "u1"),
        ("packets", ">u8"),
        ("bytes", ">u8"),
        ("start", ">u8"),
        ("end", ">u8"),
        ("in_if", ">u4"),
        ("out_if", ">u4"),
    ]
)


def v5_datagrams(count: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for sequence in range(count):
        header = struct.pack(">HHIIIIBBH", 5, 30, 3_600_000, EXPORT_SECS, 0, sequence * 30, 0, 0, 0)
        records = rng.integers(0, 256, size=(30, 48), dtype=np.uint8)
        records[:, 38] = 6  # protocol
        out.append(header + records.tobytes())
    return out


def ipfix_template() -> bytes:
    fields = b"".join(struct.pack(">HH", e, length) for e, length in IPFIX_FIELDS)
    body = struct.pack(">HH", 256, len(IPFIX_FIELDS)) + fields
    template_set = struct.pack(">HH", 2, 4 + len(body)) + body
    return struct.pack(">HHIII", 10, 16 + len(template_set), EXPORT_SECS, 0, 1) + template_set


def ipfix_datagrams(count: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for sequence in range(count):
        records = np.zeros(IPFIX_RECORDS, dtype=IPFIX_DTYPE)
        records["src"] = rng.integers(0, 2**32, IPFIX_RECORDS)
        records["dst"] = rng.integers(0, 2**32, IPFIX_RECORDS)
        records["sport"] = rng.integers(0, 2**16, IPFIX_RECORDS)
        records["dport"] = 443
        records["proto"] = 6
        records["version"] = 4
        records["packets"] = rng.integers(1, 1000, IPFIX_RECORDS)
        records["bytes"] = records["packets"] * 500
        records["start"] = EXPORT_SECS * 1000 - 10_000
        records["end"] = EXPORT_SECS * 1000 - 1_000
        body = records.tobytes()
        data_set = struct.pack(">HH", 256, 4 + len(body)) + body
        header = struct.pack(
            ">HHIII", 10, 16 + len(data_set), EXPORT_SECS, sequence * IPFIX_RECORDS, 1
        )
        out.append(header + data_set)
    return out


SFLOW_SAMPLES = 8


def sflow_datagrams(count: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for sequence in range(count):
        samples = []
        for index in range(SFLOW_SAMPLES):
            src, dst = (int(v) for v in rng.integers(0, 2**32, 2))
            length = int(rng.integers(64, 1500))
            ip = struct.pack(">BBHHHBBHII", 0x45, 0, length - 18, 0, 0x4000, 64, 6, 0, src, dst)
            tcp = struct.pack(
                ">HHIIBBHHH", int(rng.integers(1024, 65536)), 443, 0, 0, 0x50, 0x18, 0, 0, 0
            )
            frame = (b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp).ljust(128, b"\0")
            raw = struct.pack(">IIII", 1, length, 4, len(frame)) + frame
            switch = struct.pack(">IIII", 10, 0, 10, 0)
            records = (
                struct.pack(">II", 1, len(raw))
                + raw
                + struct.pack(">II", 1001, len(switch))
                + switch
            )
            body = struct.pack(
                ">IIIIIIII", sequence * SFLOW_SAMPLES + index, 3, 1000, 0, 0, 3, 4, 2
            )
            body += records
            samples.append(struct.pack(">II", 1, len(body)) + body)
        header = struct.pack(
            ">II4sIIII", 5, 1, bytes([192, 0, 2, 1]), 0, sequence, 0, SFLOW_SAMPLES
        )
        out.append(header + b"".join(samples))
    return out


def ours(datagrams: list[bytes], warmup: list[bytes], path: str = "packets") -> Callable[[], int]:
    decoder = FlowDecoder()
    decoder.decode([Packet(d, "192.0.2.1", 0) for d in warmup])
    packets = [Packet(d, "192.0.2.1", 1_700_000_000_000) for d in datagrams]
    if path == "rows":
        # The collector's layout: recvmmsg slots (FlowDecoder.decode_rows).
        rows = np.zeros((len(datagrams), max(map(len, datagrams))), dtype=np.uint8)
        for index, data in enumerate(datagrams):
            rows[index, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        lengths = np.array([len(d) for d in datagrams], dtype=np.int64)
        codes = np.zeros(len(datagrams), dtype=np.int64)

        def run_rows() -> int:
            return decoder.decode_rows(rows, lengths, codes, ["192.0.2.1"], 1_700_000_000_000).rows

        return run_rows

    def run() -> int:
        return decoder.decode(packets).rows

    return run


def peer(datagrams: list[bytes], warmup: list[bytes]) -> Callable[[], int]:
    from netflow.utils import parse_packet

    templates: dict[str, dict[object, object]] = {"netflow": {}, "ipfix": {}}
    for data in warmup:
        parse_packet(data, templates)

    def run() -> int:
        flows = 0
        for data in datagrams:
            flows += len(parse_packet(data, templates).flows)
        return flows

    return run


def flows_per_second(run: Callable[[], int], runs: int) -> float:
    rates = []
    for _ in range(runs):
        started = time.process_time()
        flows = run()
        rates.append(flows / (time.process_time() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--datagrams", type=int, default=DATAGRAMS)
    parser.add_argument(
        "--path",
        choices=("packets", "rows"),
        default="packets",
        help="our entry point: decode(packets), or decode_rows (the collector's)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    cases = {
        "NetFlow v5 (30 records/datagram)": (v5_datagrams(args.datagrams, rng), []),
        f"IPFIX softflowd-like ({IPFIX_RECORDS} records/datagram)": (
            ipfix_datagrams(args.datagrams, rng),
            [ipfix_template()],
        ),
        f"sFlow v5 ({SFLOW_SAMPLES} flow samples/datagram)": (
            sflow_datagrams(args.datagrams, rng),
            [],
        ),
    }
    print(f"{'case':44} {'netflow pkg':>14} {'lanalyze':>14} {'ratio':>8} {'µs/flow':>8}")
    for name, (datagrams, warmup) in cases.items():
        mine = flows_per_second(ours(datagrams, warmup, args.path), args.runs)
        if name.startswith("sFlow"):
            print(f"{name:44} {'-':>14} {mine:>12,.0f}/s {'-':>8} {1e6 / mine:>8.2f}")
            continue
        # The peer is ~100x slower: a tenth of the batch keeps its runs short.
        theirs = flows_per_second(peer(datagrams[: max(1, len(datagrams) // 10)], warmup), 3)
        print(
            f"{name:44} {theirs:>12,.0f}/s {mine:>12,.0f}/s {mine / theirs:>7.0f}x "
            f"{1e6 / mine:>8.2f}"
        )


if __name__ == "__main__":
    main()
