"""A real exporter against lanalyze and against nfcapd: the same flows, the same totals.

softflowd replays a capture this test writes (deterministic: a seeded generator; TCP and UDP,
IPv4 and IPv6, thousands of flows) as NetFlow v5, v9 and IPFIX, once to `lanalyze flows
collect` and once to nfcapd. Per source address, the flows, packets and bytes that lanalyze
stored equal `nfdump -s srcip` exactly. (v5 cannot carry IPv6: softflowd exports only the
IPv4 flows then, to both.)
"""

from __future__ import annotations

import csv
import io
import ipaddress
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.conftest import free_port, require_tool
from tests.flows.test_collect import Collector, start_collector, stored, wait_until

__all__ = ["start_collector"]

Totals = dict[str, tuple[int, int, int]]


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f">{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def write_capture(path: Path, flows_v4: int = 2000, flows_v6: int = 1000) -> int:
    """An Ethernet pcap of ``flows_v4 + flows_v6`` flows of 1-5 packets, interleaved."""
    rng = np.random.default_rng(20240601)
    eth4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    eth6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
    frames: list[bytes] = []
    for index in range(flows_v4 + flows_v6):
        ipv6 = index >= flows_v4
        protocol = 6 if index % 2 else 17
        src = int(rng.integers(0, 40))
        dst = int(rng.integers(0, 200))
        sport = 1024 + index
        dport = int(rng.choice([53, 80, 443, 8080]))
        for number in range(int(rng.integers(1, 6))):
            payload = bytes(int(rng.integers(0, 400)))
            if protocol == 6:
                flags = 0x18 if number else 0x02
                l4 = struct.pack(">HHIIBBHHH", sport, dport, number, 0, 5 << 4, flags, 65535, 0, 0)
            else:
                l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0)
            l4 += payload
            if ipv6:
                source = bytes.fromhex("20010db8" + "00" * 10) + struct.pack(">H", src + 1)
                target = bytes.fromhex("20010db8ffff" + "00" * 8) + struct.pack(">H", dst + 1)
                ip = struct.pack(">IHBB", 6 << 28, len(l4), protocol, 64) + source + target
                frames.append(eth6 + ip + l4)
            else:
                header = struct.pack(
                    ">BBHHHBBH4s4s",
                    0x45,
                    0,
                    20 + len(l4),
                    index & 0xFFFF,
                    0,
                    64,
                    protocol,
                    0,
                    bytes([10, 1, 0, src + 1]),
                    bytes([172, 16, dst >> 8, dst & 0xFF]),
                )
                header = header[:10] + struct.pack(">H", _checksum(header)) + header[12:]
                frames.append(eth4 + header + l4)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    start = 1_700_000_000_000_000  # microseconds
    for slot, frame_index in enumerate(rng.permutation(len(frames)).tolist()):
        frame = frames[frame_index]
        stamp = start + slot * 500
        out.append(
            struct.pack("<IIII", stamp // 10**6, stamp % 10**6, len(frame), len(frame)) + frame
        )
    path.write_bytes(b"".join(out))
    return flows_v4 + flows_v6


def replay(softflowd: str, capture: Path, port: int, version: int, workdir: Path) -> None:
    subprocess.run(
        [
            softflowd,
            *("-r", str(capture), "-n", f"127.0.0.1:{port}", "-v", str(version)),
            *("-m", "2000000", "-d", "-p", str(workdir / f"softflowd-{port}.pid")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def udp_queue_empty(port: int) -> bool:
    """Whether the kernel holds no unread datagram for the UDP socket on ``port``."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16) == 0
    return True


def nfdump_totals(nfdump: str, directory: Path) -> Totals:
    out = subprocess.run(
        [nfdump, "-R", str(directory), "-s", "srcip", "-n", "0", "-o", "csv"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    table = out.split("\n\n")[0]
    totals: Totals = {}
    for row in csv.DictReader(io.StringIO(table)):
        address = str(ipaddress.ip_address(row["val"]))
        totals[address] = (int(row["fl"]), int(row["ipkt"]), int(row["ibyt"]))
    return totals


def lanalyze_totals(data_dir: Path) -> Totals:
    files = [str(p) for p in sorted((data_dir / "flows" / "raw").glob("*/*.parquet"))]
    rows = (
        duckdb.connect()
        .execute(
            "select src_addr, sum(flows), sum(packets), sum(bytes) from read_parquet(?) "
            "group by src_addr",
            [files],
        )
        .fetchall()
    )
    totals: Totals = {}
    for raw, flows, packets, octets in rows:
        address = ipaddress.IPv6Address(bytes(raw))
        text = str(address.ipv4_mapped or address)
        totals[text] = (int(flows), int(packets), int(octets))
    return totals


def nfcapd_collect(capture: Path, version: int, workdir: Path) -> tuple[Path, Path]:
    """Replay ``capture`` with softflowd to a real nfcapd; its directory and its log."""
    softflowd = require_tool("softflowd")
    nfcapd = require_tool("nfcapd")
    directory = workdir / "nfcapd"
    directory.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    log_path = workdir / "nfcapd.log"
    with open(log_path, "w") as log_file:
        peer = subprocess.Popen(
            [
                nfcapd,
                *("-w", str(directory), "-p", str(port), "-b", "127.0.0.1"),
                *("-B", str(16 * 2**20), "-P", str(workdir / "nfcapd.pid")),
            ],
            stdout=log_file,
            stderr=log_file,
        )
        try:
            wait_until(lambda: "Startup" in log_path.read_text(), 20, "nfcapd started")
            replay(softflowd, capture, port, version, workdir)
            # nfcapd has no counter to wait for: wait until it has read everything.
            for _ in range(2):
                wait_until(lambda: udp_queue_empty(port), 20, "nfcapd read all")
                time.sleep(0.3)
        finally:
            peer.send_signal(signal.SIGTERM)  # nfcapd writes its file on SIGTERM
            peer.wait(timeout=20)
    return directory, log_path


@pytest.mark.parametrize("version", [5, 9, 10])
def test_softflowd_totals_match_nfcapd(
    version: int,
    tmp_path: Path,
    data_dir: Path,
    start_collector: Callable[..., Collector],
) -> None:
    softflowd = require_tool("softflowd")
    nfdump = require_tool("nfdump")
    capture = tmp_path / "flows.pcap"
    write_capture(capture)

    nf_dir, nf_log = nfcapd_collect(capture, version, tmp_path)
    expected = nfdump_totals(nfdump, nf_dir)
    expected_flows = sum(flows for flows, _, _ in expected.values())
    assert expected_flows == (2000 if version == 5 else 3000), nf_log.read_text()
    assert any(":" in address for address in expected) == (version != 5)

    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"])
    replay(softflowd, capture, port, version, tmp_path)
    wait_until(lambda: stored(data_dir) == expected_flows, 20, f"{expected_flows} flows")
    assert collector.stop() == 0
    assert lanalyze_totals(data_dir) == expected
