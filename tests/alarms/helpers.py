"""Synthetic attacks as real NetFlow v5 export packets, and a collector running detection."""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import lanalyze_cmd
from tests.flows.test_collect import wait_until

UPTIME = 600_000


@dataclass
class Flow:
    src: str
    dst: str
    src_port: int = 40000
    dst_port: int = 80
    protocol: int = 6
    flags: int = 0x02
    packets: int = 1
    bytes: int = 60


def v5_datagrams(flows: list[Flow], sequence: int = 0) -> list[bytes]:
    """NetFlow v5 datagrams (30 records each) carrying ``flows``, stamped now."""
    out = []
    for start in range(0, len(flows), 30):
        chunk = flows[start : start + 30]
        now = time.time()
        header = struct.pack(
            ">HHIIIIBBH",
            5,
            len(chunk),
            UPTIME,
            int(now),
            int(now % 1 * 1e9),
            sequence + start,
            0,
            0,
            0,
        )
        records = b"".join(
            struct.pack(
                ">4s4s4sHHIIIIHHBBBBHHBBH",
                ipaddress.IPv4Address(f.src).packed,
                ipaddress.IPv4Address(f.dst).packed,
                bytes(4),
                1,
                2,
                f.packets,
                f.bytes,
                UPTIME - 5000,
                UPTIME - 1000,
                f.src_port,
                f.dst_port,
                0,
                f.flags,
                f.protocol,
                0,
                0,
                0,
                24,
                24,
                0,
            )
            for f in chunk
        )
        out.append(header + records)
    return out


def send_flows(port: int, flows: list[Flow], source: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in v5_datagrams(flows):
            sock.sendto(datagram, ("127.0.0.1", port))
            time.sleep(0.0002)


TEST_ALARMS = """
[alarms]
interval = 0.2
close_after = 3600
snapshot_interval = 1
[alarms.scan]
window = 86400
horizontal_hosts = 100
vertical_ports = 100
[alarms.flood]
window = 86400
pps = 1
fps = 1000000
syn_fps = 0.01
reflection_bps = 10
[alarms.mass_mailer]
window = 86400
hosts = 100
[alarms.exporter]
silent_after = 3600
"""
"""Windows of a day (a test's traffic never straddles one), thresholds per day's traffic."""


def write_config(path: Path, port: int, extra: str = "") -> Path:
    path.write_text(
        f'[flows]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\nflush_interval = 0.2\n'
        + "[flows.rollup]\nenabled = false\n"
        + TEST_ALARMS
        + extra
    )
    return path


class Collector:
    """``lanalyze flows collect`` with a configuration file, its log in a file."""

    def __init__(self, config: Path, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.config = config
        self.log_path = data_dir.parent / f"collect-{time.monotonic_ns()}.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115
        args = [*lanalyze_cmd(), "--config", str(config), "flows", "collect"]
        self.proc = subprocess.Popen(
            [*args, "--data", str(data_dir)], stdout=self.log_file, stderr=self.log_file
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited: {self.log_path.read_text()}")
            text = self.log_path.read_text()
            return "event=flows.ready" in text and "event=alarms.started" in text

        try:
            wait_until(ready, 60, "collector ready")
        except BaseException:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log_file.close()


def alarms(config: Path, *args: str) -> Any:
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "alarms", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def alarm_list(data_dir: Path) -> list[dict[str, Any]]:
    """The alarms, read in-process (faster than the command; the command has its own test)."""
    from lanalyze.alarms.store import AlarmQuery, AlarmStore

    store = AlarmStore.open_readonly(data_dir)
    if store is None:
        return []
    with store:
        return store.search(AlarmQuery(limit=1000)).rows


def of(rows: list[dict[str, Any]], algorithm: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["algorithm"] == algorithm]
