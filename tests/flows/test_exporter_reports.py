"""Two exporters numbering their interfaces alike, against nfdump: per router, per ifIndex.

Two NetFlow v5 exporters (hand-built datagrams sent from the loopback addresses 127.0.0.2 and
127.0.0.3; generated because two softflowd cannot be given distinct source addresses) both
use ifIndex 1, and each has one more of its own. The same datagrams go to `lanalyze flows
collect` and to a real nfcapd. Then, per router, ``lanalyze flows top --by inif --filter
'router ip X'`` equals ``nfdump -s inif 'router ip X'``, ``--by router`` equals ``nfdump -s
router``, and the interface report has one row per (exporter, ifIndex) with the same bytes.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.flows.test_collect import Collector, start_collector, stored, wait_until
from tests.flows.test_decode_v5 import v5_datagram, v5_record
from tests.flows.test_softflowd import udp_queue_empty

__all__ = ["start_collector"]

# exporter -> [(in_if, out_if)] of its records; ifIndex 1 is on both.
EXPORTERS = {"127.0.0.2": [(1, 2), (2, 1), (1, 7)], "127.0.0.3": [(1, 3), (3, 1)]}
DATAGRAMS = 20
RECORDS = 30

Rows = dict[str, tuple[int, int, int]]


def datagrams(exporter: str) -> list[bytes]:
    """Deterministic v5 datagrams of one exporter, its interfaces in turn."""
    pairs = EXPORTERS[exporter]
    salt = int(ipaddress.IPv4Address(exporter)) & 0xFF
    found = []
    for number in range(DATAGRAMS):
        records = []
        for index in range(RECORDS):
            n = number * RECORDS + index
            in_if, out_if = pairs[n % len(pairs)]
            records.append(
                v5_record(
                    index,
                    input=in_if,
                    output=out_if,
                    packets=1 + (n * 7 + salt) % 50,
                    bytes=100 + (n * 131 + salt * 17) % 9000,
                    src_port=1024 + n,
                )
            )
        found.append(v5_datagram(records, sequence=number * RECORDS))
    return found


def send_from(source: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in datagrams(source):
            sock.sendto(datagram, ("127.0.0.1", port))
            time.sleep(0.0005)


def send_all(port: int) -> None:
    for source in EXPORTERS:
        send_from(source, port)


def nfcapd_collect(workdir: Path) -> Path:
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
                *("-P", str(workdir / "nfcapd.pid")),
            ],
            stdout=log_file,
            stderr=log_file,
        )
        try:
            wait_until(lambda: "Startup" in log_path.read_text(), 20, "nfcapd started")
            send_all(port)
            for _ in range(2):
                wait_until(lambda: udp_queue_empty(port), 20, "nfcapd read all")
                time.sleep(0.3)
        finally:
            peer.send_signal(signal.SIGTERM)  # nfcapd writes its file on SIGTERM
            peer.wait(timeout=20)
    return directory


def nfdump_rows(directory: Path, statistic: str, flt: str = "") -> Rows:
    nfdump = require_tool("nfdump")
    out = subprocess.run(
        [nfdump, "-R", str(directory), "-s", f"{statistic}/bytes", "-n", "0", "-o", "csv"]
        + ([flt] if flt else []),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows: Rows = {}
    for row in csv.DictReader(io.StringIO(out.split("\n\n")[0])):
        rows[normal(row["val"])] = (int(row["fl"]), int(row["pkt"]), int(row["byt"]))
    return rows


def normal(value: object) -> str:
    text = str(value).strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def lanalyze(data_dir: Path, command: str, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [
            *lanalyze_cmd(),
            *("flows", command, "-n", "0", "--format", "json", "--no-server"),
            *("--since", "-1h", "--data", str(data_dir), *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def lanalyze_rows(data_dir: Path, by: str, flt: str = "") -> Rows:
    args = ["--by", by, *(["--filter", flt] if flt else [])]
    return {
        normal(row[by]): (int(row["flows"]), int(row["packets"]), int(row["bytes"]))  # type: ignore[call-overload]
        for row in lanalyze(data_dir, "top", *args)
    }


def test_two_exporters_sharing_ifindex_equal_nfdump(
    tmp_path: Path, data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    require_tool("nfdump")
    expected_dir = nfcapd_collect(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"])
    send_all(port)
    total = DATAGRAMS * RECORDS * len(EXPORTERS)
    wait_until(lambda: stored(data_dir) == total, 30, f"{total} flows stored")
    assert collector.stop() == 0

    by_router = nfdump_rows(expected_dir, "router")
    assert set(by_router) == set(EXPORTERS)
    assert lanalyze_rows(data_dir, "router") == by_router
    assert lanalyze_rows(data_dir, "exporter") == by_router

    interfaces = {
        (str(row["exporter"]), int(row["interface"])): int(row["in_bytes"])  # type: ignore[call-overload]
        for row in lanalyze(data_dir, "interfaces")
    }
    for exporter in EXPORTERS:
        flt = f"router ip {exporter}"
        per_if = nfdump_rows(expected_dir, "inif", flt)
        assert lanalyze_rows(data_dir, "inif", flt) == per_if, exporter
        assert lanalyze_rows(data_dir, "inif", f"exporter {exporter}") == per_if, exporter
        for ifindex, (_, _, in_bytes) in per_if.items():
            assert interfaces[(exporter, int(ifindex))] == in_bytes
    # ifIndex 1 is two interfaces: summed over both routers it is neither of them.
    both = nfdump_rows(expected_dir, "inif")["1"]
    firsts = [nfdump_rows(expected_dir, "inif", f"router ip {e}")["1"] for e in EXPORTERS]
    assert both[2] == sum(first[2] for first in firsts) and all(f != both for f in firsts)
    assert lanalyze_rows(data_dir, "inif", "router net 127.0.0.2/31") == nfdump_rows(
        expected_dir, "inif"
    )
