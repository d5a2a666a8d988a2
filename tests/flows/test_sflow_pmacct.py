"""A real sFlow exporter against lanalyze and against a real sFlow collector: same totals.

pmacct's ``pmacctd`` reads a capture this test writes (the softflowd test's seeded generator:
TCP and UDP, IPv4 and IPv6) and exports every packet as an sFlow v5 flow sample with two
``sfprobe`` plugins at once: one to `lanalyze flows collect`, one to pmacct's own collector
``sfacctd`` (print plugin, aggregated by source address). Per source address, the packets and
bytes lanalyze stored equal sfacctd's exactly (sampling 1 in 1: sfprobe samples each
plugin's copy apart, so only an unsampled export gives both the same packets).

The same listen address then takes NetFlow v5 and an sFlow counter sample (built here: sfprobe
sends counters only every few tens of seconds), which reach the store and
``interface_counters.json``, and from there the interface report's speed and utilisation.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lanalyze.flows.query.reports.iface import top_interfaces
from tests.conftest import free_port, require_tool
from tests.flows.test_collect import (
    Collector,
    send,
    start_collector,
    stored,
    v5_datagram,
    wait_until,
)
from tests.flows.test_decode_sflow import counter_sample, generic_counters, sflow_datagram
from tests.flows.test_softflowd import lanalyze_totals, udp_queue_empty, write_capture

__all__ = ["start_collector"]

Totals = dict[str, tuple[int, int, int]]


def sfacctd_totals(path: Path) -> Totals:
    """Packets and bytes per source of sfacctd's CSV (appended per refresh: summed), with
    one flow per packet as each sample is one flow here."""
    totals: dict[str, list[int]] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            if row.get("SRC_IP") in (None, "SRC_IP"):
                continue  # the header of a later refresh
            address = str(ipaddress.ip_address(row["SRC_IP"]))
            entry = totals.setdefault(address, [0, 0])
            entry[0] += int(row["PACKETS"])
            entry[1] += int(row["BYTES"])
    return {address: (p, p, b) for address, (p, b) in totals.items()}


def test_pmacct_sfprobe_totals_match_sfacctd(
    tmp_path: Path, data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    pmacctd = require_tool("pmacctd")
    sfacctd = require_tool("sfacctd")
    capture = tmp_path / "flows.pcap"
    write_capture(capture, flows_v4=300, flows_v6=150)

    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"])

    reference_port = free_port(socket.SOCK_DGRAM)
    reference_csv = tmp_path / "sfacctd.csv"
    (tmp_path / "sfacctd.conf").write_text(
        "daemonize: false\n"
        f"sfacctd_ip: 127.0.0.1\nsfacctd_port: {reference_port}\n"
        "plugins: print\naggregate: src_host\nprint_output: csv\n"
        f"print_output_file: {reference_csv}\nprint_output_file_append: true\n"
        "print_refresh_time: 1\n"
    )
    (tmp_path / "pmacctd.conf").write_text(
        "daemonize: false\n"
        f"pcap_savefile: {capture}\n"
        "plugins: sfprobe[ours], sfprobe[theirs]\n"
        f"sfprobe_receiver[ours]: 127.0.0.1:{port}\n"
        f"sfprobe_receiver[theirs]: 127.0.0.1:{reference_port}\n"
        "sfprobe_agentip: 127.0.0.1\n"
    )
    reference_log = tmp_path / "sfacctd.log"
    with open(reference_log, "w") as log_file:
        reference = subprocess.Popen(
            [sfacctd, "-f", str(tmp_path / "sfacctd.conf")], stdout=log_file, stderr=log_file
        )
        try:
            wait_until(
                lambda: "waiting for sFlow data" in reference_log.read_text(), 20, "sfacctd up"
            )
            # Not check=True: pmacctd may exit 1 when a plugin ends before the core does
            # ("connection lost"), after exporting everything; the totals below judge it.
            exporter = subprocess.run(
                [pmacctd, "-f", str(tmp_path / "pmacctd.conf")],
                capture_output=True,
                text=True,
                timeout=60,
            )
            wait_until(lambda: udp_queue_empty(reference_port), 20, "sfacctd read all")
            time.sleep(1.5)  # one print refresh; sfacctd also purges its cache on SIGINT
        finally:
            reference.send_signal(signal.SIGINT)
            reference.wait(timeout=20)
    expected = sfacctd_totals(reference_csv)
    packets = sum(p for _, p, _ in expected.values())
    assert packets > 1000, exporter.stderr + reference_log.read_text()
    assert any(":" in address for address in expected)

    wait_until(lambda: stored(data_dir) == packets, 20, f"{packets} flows")
    assert lanalyze_totals(data_dir) == expected
    assert stored(data_dir, "min(sampling_rate) = 1 and max(sampling_rate) = 1")

    # The same address takes NetFlow v5 and sFlow counter samples (10 s of agent uptime
    # apart: 12.5 MB in is 10 Mb/s on a 100 Mb/s interface).
    send(port, [v5_datagram(1, 0, count=3)])
    send(
        port,
        [
            sflow_datagram([counter_sample([generic_counters(1, 10**8, 0, 0)])], uptime=50_000),
            sflow_datagram(
                [counter_sample([generic_counters(1, 10**8, 12_500_000, 0)])],
                sequence=2,
                uptime=60_000,
            ),
        ],
    )
    wait_until(lambda: stored(data_dir) == packets + 3, 20, "the v5 flows too")
    counters = data_dir / "flows" / "interface_counters.json"
    wait_until(lambda: counters.exists() and "12500000" in counters.read_text(), 20, "counters")
    entry = json.loads(counters.read_text())["127.0.0.1"]["1"]
    assert (entry["speed_bps"], entry["in_bps"], entry["out_bps"]) == (10**8, 10**7, 0)
    assert collector.stop() == 0

    # The v5 records' input interface is 1 (test_collect.v5_datagram): the report now knows
    # its speed without SNMP, and so its utilisation.
    now = int(time.time() * 1000)
    rows = top_interfaces(data_dir / "flows", since=now - 3_600_000, until=now + 60_000)
    by_index = {(row.exporter, row.interface): row for row in rows}
    row = by_index["127.0.0.1", 1]
    assert row.speed_bps == 10**8
    assert row.in_util_pct is not None
