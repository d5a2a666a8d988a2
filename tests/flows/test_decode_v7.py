"""NetFlow v7 and the ICMP normalisation of v5/v7, against a real exporter and nfdump.

- v7 from fprobe (Debian's `fprobe -n 7`): it captures only live interfaces, so the test runs
  it on the loopback interface of a fresh network namespace (`unshare -n`, root only; skipped
  otherwise), sends UDP and ICMP there, and keeps the v7 datagrams fprobe exports.
- The same datagrams go to a real nfcapd and to `lanalyze flows collect`; `nfdump 'icmp-type N'`
  and `lanalyze flows list --filter 'icmp-type N'` must find the same flows. fprobe puts the
  ICMP type in the source port and the code in the destination port, which is the case the
  normalisation is for.
- Hand-built v7 datagrams, encoded from Cisco's v7 format description (24-byte header with 4
  reserved bytes, 52-byte records), cover what fprobe cannot be made to send (full datagrams,
  a lying count, sequence gaps).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lanalyze.flows.decode import FlowDecoder, Packet
from lanalyze.flows.decode_cli import records
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.flows.test_collect import Collector, send, start_collector, stored, wait_until
from tests.flows.test_decode_v5 import UNIX_SECS, UPTIME, v5_datagram, v5_record
from tests.flows.test_softflowd import udp_queue_empty

__all__ = ["start_collector"]


def v7_record(index: int, router_sc: int = 0xC6336401, **overrides: int) -> bytes:
    """v5's 48 bytes (the pad byte is v7's flags, left 0) and the shortcut router."""
    return v5_record(index, **overrides) + struct.pack(">I", router_sc)


def v7_datagram(records_: list[bytes], *, sequence: int = 0, count: int | None = None) -> bytes:
    header = struct.pack(
        ">HHIIIII",
        7,
        len(records_) if count is None else count,
        UPTIME,
        UNIX_SECS,
        250_000_000,  # as v5_datagram's default
        sequence,
        0xFFFFFFFF,  # reserved: must not be read as engine or sampling
    )
    return header + b"".join(records_)


def decode(datagrams: list[bytes], decoder: FlowDecoder | None = None) -> list[dict[str, object]]:
    decoder = decoder or FlowDecoder()
    batch = decoder.decode([Packet(d, "192.0.2.9", 1_700_000_000_000) for d in datagrams])
    return list(records(batch))


def test_v7_fields_like_v5() -> None:
    rows = decode([v7_datagram([v7_record(i) for i in range(28)])])
    reference = decode([v5_datagram([v5_record(i) for i in range(28)])])
    assert len(rows) == 28
    for row, expected in zip(rows, reference, strict=True):
        assert row == expected | {"observation_domain": 0, "sampling_rate": 1}


def test_v7_through_the_collector_path() -> None:
    """decode_rows (recvmmsg slots) tells v7 from v5 of the same length group."""
    import numpy as np

    datagrams = [
        v7_datagram([v7_record(i) for i in range(3)], sequence=0),
        v5_datagram([v5_record(i) for i in range(3)], sequence=0),
        v7_datagram([v7_record(i) for i in range(2)], sequence=3),
    ]
    slots = np.zeros((len(datagrams), 2048), dtype=np.uint8)
    for i, datagram in enumerate(datagrams):
        slots[i, : len(datagram)] = np.frombuffer(datagram, np.uint8)
    lengths = np.array([len(d) for d in datagrams])
    batch = FlowDecoder().decode_rows(slots, lengths, np.zeros(3, np.int64), ["192.0.2.9"], 1)
    assert batch.rows == 8
    versions = {(s.version, s.flows, s.packets, s.sequence_gaps) for s in batch.stats}
    assert versions == {(7, 5, 2, 0), (5, 3, 1, 0)}


def test_v7_bad_count_and_gap_counted() -> None:
    decoder = FlowDecoder()
    good = v7_datagram([v7_record(0), v7_record(1)], sequence=10)
    lying = v7_datagram([v7_record(0)], count=2)
    batch = decoder.decode(
        [Packet(d, "192.0.2.9", 1) for d in (good, lying, v7_datagram([v7_record(0)], sequence=15))]
    )
    (stats,) = batch.stats
    assert (stats.version, stats.decode_errors, stats.sequence_gaps) == (7, 1, 3)
    assert batch.rows == 3
    assert "v7 header count" in batch.problems[0].reason


@pytest.mark.parametrize(
    ("src_port", "dst_port", "expected"),
    [
        (0, 0x0800, 0x0800),  # type << 8 | code in the destination port: as is
        (8, 0, 0x0800),  # fprobe: type in the source port
        (3, 3, 0x0303),  # fprobe: type 3 code 3 (nfdump drops the code: 0x0300)
        (0x0008, 0x1234, 0x0800),  # nfdump: the source port byte-swapped wins
        (0x0B01, 0, 0x010B),  # nfdump's byte swap, as nfdump does it
    ],
)
def test_icmp_in_source_port(src_port: int, dst_port: int, expected: int) -> None:
    rec = {"protocol": 1, "src_port": src_port, "dst_port": dst_port}
    for datagram in (v5_datagram([v5_record(0, **rec)]), v7_datagram([v7_record(0, **rec)])):
        (row,) = decode([datagram])
        assert (row["src_port"], row["dst_port"]) == (0, expected)
        assert (row["icmp_type"], row["icmp_code"]) == (expected >> 8, expected & 0xFF)
    (tcp,) = decode([v5_datagram([v5_record(0, protocol=6, src_port=8, dst_port=0)])])
    assert (tcp["src_port"], tcp["dst_port"]) == (8, 0)


# --- fprobe, nfcapd, lanalyze -------------------------------------------------------------

NETNS_SCRIPT = textwrap.dedent(
    """
    import socket, subprocess, sys
    fprobe, out = sys.argv[1], sys.argv[2]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 2055))
    rx.settimeout(1)
    probe = subprocess.Popen([fprobe, "-i", "lo", "-n", "7", "-e", "1", "-d", "1", "-s", "1",
                              "-l", "0", "127.0.0.1:2055"])

    def checksum(data):
        total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF

    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    want = {(1, 2, 17), (2, 1, 1), (1, 3, 1), (3, 1, 1)}  # (src, dst last byte, protocol)
    got, seen = [], set()
    try:
        for _ in range(60):  # a safety net only: the loop ends when fprobe exported them all
            # Sent again each round: fprobe starts capturing asynchronously.
            for _ in range(3):
                tx.sendto(b"x" * 100, ("127.0.0.2", 9999))  # and: port unreachable (3/3)
            echo = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"p" * 56
            echo = echo[:2] + checksum(echo).to_bytes(2, "big") + echo[4:]
            icmp.sendto(echo, ("127.0.0.3", 0))  # and the kernel's echo reply (0/0)
            try:
                data = rx.recv(65535)
            except TimeoutError:
                continue
            got.append(data)
            for i in range(int.from_bytes(data[2:4], "big")):
                record = data[24 + 52 * i : 76 + 52 * i]
                seen.add((record[3], record[7], record[38]))
            if want <= seen:
                break
    finally:
        probe.terminate()
        probe.wait()
    with open(out, "wb") as handle:
        for data in got:
            handle.write(len(data).to_bytes(2, "big") + data)
    """
)


def fprobe_v7(tmp_path: Path) -> list[bytes]:
    fprobe = require_tool("fprobe")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("fprobe needs a network namespace: root and unshare(1)")
    out = tmp_path / "v7.bin"
    script = tmp_path / "netns.py"
    script.write_text(NETNS_SCRIPT)
    subprocess.run(
        ["unshare", "-n", sys.executable, str(script), fprobe, str(out)],
        check=True,
        timeout=120,
    )
    raw = out.read_bytes()
    datagrams = []
    while raw:
        size = int.from_bytes(raw[:2], "big")
        datagrams.append(raw[2 : 2 + size])
        raw = raw[2 + size :]
    assert all(d[:2] == b"\x00\x07" for d in datagrams)
    return datagrams


def nfdump_icmp(datagrams: list[bytes], workdir: Path, filters: list[str]) -> dict[str, set]:
    nfcapd = require_tool("nfcapd")
    nfdump = require_tool("nfdump")
    directory = workdir / "nfcapd"
    directory.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    log_path = workdir / "nfcapd.log"
    with open(log_path, "w") as log_file:
        peer = subprocess.Popen(
            [nfcapd, "-w", str(directory), "-p", str(port), "-b", "127.0.0.1"],
            stdout=log_file,
            stderr=log_file,
        )
        try:
            wait_until(lambda: "Startup" in log_path.read_text(), 20, "nfcapd started")
            send(port, datagrams)
            for _ in range(2):
                wait_until(lambda: udp_queue_empty(port), 20, "nfcapd read all")
                time.sleep(0.3)
        finally:
            peer.send_signal(signal.SIGTERM)
            peer.wait(timeout=20)
    found: dict[str, set] = {}
    for text in filters:
        out = subprocess.run(
            [nfdump, "-R", str(directory), "-q", "-o", "fmt:%sa,%da,%pkt,%byt", text],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found[text] = {
            tuple(int(v) if v.strip().isdigit() else v.strip() for v in line.split(","))
            for line in out.splitlines()
            if line.strip()
        }
    return found


def test_fprobe_v7_icmp_filters_agree_with_nfdump(
    tmp_path: Path, data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    datagrams = fprobe_v7(tmp_path)
    filters = ["proto icmp", "icmp-type 8", "icmp-type 0", "icmp-type 3", "proto udp"]
    expected = nfdump_icmp(datagrams, tmp_path, filters)
    assert expected["icmp-type 8"] and expected["icmp-type 3"]

    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"])
    send(port, datagrams)
    total = sum(int.from_bytes(d[2:4], "big") for d in datagrams)
    wait_until(lambda: stored(data_dir) == total, 20, "collector stored every flow")
    collector.stop()
    for text in filters:
        got = {
            (f["src_addr"], f["dst_addr"], f["packets"], f["bytes"]) for f in listed(data_dir, text)
        }
        assert got == expected[text], text
    # fprobe's port unreachable: type 3 code 3 here, nfdump keeps type 3 and loses the code.
    flows = listed(data_dir, "icmp-type 3 and icmp-code 3")
    assert {f["src_addr"] for f in flows} == {"127.0.0.2"}


def listed(data_dir: Path, text: str) -> list[dict[str, object]]:
    command = [*lanalyze_cmd(), "flows", "list", "--data", str(data_dir), "--since", "-3650d"]
    command += ["--filter", text, "-n", "1000", "--format", "json"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    flows: list[dict[str, object]] = json.loads(out)
    return flows
