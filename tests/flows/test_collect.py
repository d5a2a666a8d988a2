"""`lanalyze flows collect` as a subprocess: receive, store, count, report, stop cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from lanalyze import metrics
from lanalyze.flows.collector import FlowCollector
from lanalyze.flows.config import FlowsConfig
from tests.conftest import free_port, lanalyze_cmd

# -- export packets built by hand (the wire formats, independent of our decoder) -------------


def v5_datagram(sequence: int, first_host: int, count: int = 30, engine_id: int = 0) -> bytes:
    """A NetFlow v5 datagram: flows from 10.0.x.y (one per host) to 192.168.0.1:80."""
    now = time.time()
    uptime = 600_000
    header = struct.pack(
        ">HHIIIIBBH", 5, count, uptime, int(now), int(now % 1 * 1e9), sequence, 0, engine_id, 0
    )
    records = b"".join(
        struct.pack(
            ">4s4s4sHHIIIIHHBBBBHHBBH",
            bytes([10, 0, (first_host + i) >> 8 & 0xFF, (first_host + i) & 0xFF]),
            bytes([192, 168, 0, 1]),
            bytes(4),
            1,
            2,
            3,
            1000 + i,
            uptime - 5000,
            uptime - 1000,
            1024 + i,
            80,
            0,
            0x1B,
            6,
            0,
            0,
            0,
            24,
            24,
            0,
        )
        for i in range(count)
    )
    return header + records


IPFIX_TEMPLATE_ID = 256
# sourceIPv4Address, destinationIPv4Address, sourceTransportPort, destinationTransportPort,
# protocolIdentifier, octetDeltaCount (8), packetDeltaCount (8), flowStart/EndMilliseconds.
IPFIX_FIELDS = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8))


def ipfix_message(sets: list[bytes], sequence: int, domain: int = 7) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), int(time.time()), sequence, domain) + body


def ipfix_template_set() -> bytes:
    fields = b"".join(struct.pack(">HH", element, length) for element, length in IPFIX_FIELDS)
    record = struct.pack(">HH", IPFIX_TEMPLATE_ID, len(IPFIX_FIELDS)) + fields
    return struct.pack(">HH", 2, 4 + len(record)) + record


def ipfix_data_set(first_host: int, count: int) -> bytes:
    now_ms = int(time.time() * 1000)
    records = b"".join(
        struct.pack(
            ">4s4sHHBQQQQ",
            bytes([10, 1, (first_host + i) >> 8 & 0xFF, (first_host + i) & 0xFF]),
            bytes([192, 168, 0, 2]),
            2000 + i,
            443,
            17,
            500 + i,
            2,
            now_ms - 3000,
            now_ms - 1000,
        )
        for i in range(count)
    )
    return struct.pack(">HH", IPFIX_TEMPLATE_ID, 4 + len(records)) + records


# -- running the collector -------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


class Collector:
    """A `lanalyze flows collect` subprocess, its log in a file (no pipe to fill up)."""

    def __init__(
        self, data_dir: Path, listen: list[str], workers: int = 1, session: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"collect-{time.monotonic_ns()}.log"
        args = [*lanalyze_cmd(), "flows", "collect", "--data", str(data_dir)]
        args += ["--workers", str(workers)]
        for address in listen:
            args += ["--listen", address]
        self.log_file = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=self.log_file, stderr=self.log_file, start_new_session=session
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_listening(self, count: int = 1) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}: {self.log}")
            # Bound at once ("flows.listening"); every worker running: "flows.ready".
            return self.log.count("event=flows.listening") >= count and (
                "event=flows.ready" in self.log
            )

        wait_until(ready, 60, "collector ready")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log_file.close()
        return code


@pytest.fixture
def start_collector(data_dir: Path) -> Iterator[Callable[..., Collector]]:
    started: list[Collector] = []

    def start(listen: list[str], workers: int = 1, session: bool = False) -> Collector:
        collector = Collector(data_dir, listen, workers, session)
        started.append(collector)
        collector.wait_listening()
        return collector

    yield start
    for collector in started:
        if collector.proc.poll() is None:
            collector.stop(signal.SIGKILL)


def stored(data_dir: Path, query: str = "count(*)") -> Any:
    files = sorted((data_dir / "flows" / "raw").glob("*/*.parquet"))
    if not files:
        return None
    rows = duckdb.connect().execute(f"select {query} from read_parquet(?)", [list(map(str, files))])
    return rows.fetchall()[0][0]


def send(port: int, datagrams: list[bytes], host: str = "127.0.0.1") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, (host, port))
            time.sleep(0.0002)  # loopback is fast, but keep well inside the socket buffer


# -- tests -----------------------------------------------------------------------------------


def test_v5_flows_are_stored_counted_and_shown(
    data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    port = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port}"], workers=2)
    send(port, [v5_datagram(i * 30, i * 30) for i in range(100)])
    # Flows are queryable within a few seconds, while the collector runs.
    wait_until(lambda: stored(data_dir) == 3000, 15, "3000 flows stored")
    assert stored(data_dir, "count(distinct src_addr)") == 3000
    assert stored(data_dir, "sum(bytes)") == sum(1000 + i for i in range(30)) * 100

    # Garbage from a peer: counted per exporter, logged, never fatal.
    send(port, [b"\x00\x07nonsense"] * 50 + [b"\x00"])
    exporters = data_dir / "flows" / "exporters.json"

    def counted() -> bool:
        data = json.loads(exporters.read_text()) if exporters.exists() else {"exporters": []}
        return bool(sum(row["decode_errors"] for row in data["exporters"]) == 51)

    wait_until(counted, 15, "decode errors in exporters.json")
    result = subprocess.run(
        [*lanalyze_cmd(), "flows", "exporters", "--data", str(data_dir), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data = json.loads(result.stdout)
    (row,) = data["exporters"]
    assert row["exporter"] == "127.0.0.1" and row["observation_domain"] == 0
    assert (row["packets"], row["flows"], row["sequence_gaps"]) == (100, 3000, 0)
    assert row["last_seen_ms"] > 0
    assert list(data["kernel_drops"]) == [f"127.0.0.1:{port}"]
    table = subprocess.run(
        [*lanalyze_cmd(), "flows", "exporters", "--data", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "127.0.0.1" in table.splitlines()[1] and "3000" in table
    assert f"kernel receive drops on 127.0.0.1:{port}: 0" in table

    assert collector.stop() == 0
    log = collector.log
    # Rate-limited: 51 bad datagrams, a handful of log lines naming the exporter.
    bad_lines = [line for line in log.splitlines() if "event=flows.bad_datagram" in line]
    assert 1 <= len(bad_lines) <= 10, log
    assert all("exporter=127.0.0.1" in line for line in bad_lines)
    assert "Traceback" not in log
    # Nothing half-written is visible; every stored file is complete.
    assert not list((data_dir / "flows" / "raw").glob("*/*.tmp"))


def test_ipv4_and_ipv6_listeners_with_sequence_gaps(
    data_dir: Path, start_collector: Callable[..., Collector]
) -> None:
    port4 = free_port(socket.SOCK_DGRAM)
    port6 = free_port(socket.SOCK_DGRAM)
    collector = start_collector([f"127.0.0.1:{port4}", f"[::1]:{port6}"])
    send(port4, [v5_datagram(0, 0, 10), v5_datagram(40, 10, 10)])  # 30 flows lost between
    send(port6, [v5_datagram(0, 100, 5)], host="::1")
    wait_until(lambda: stored(data_dir) == 25, 15, "25 flows stored")
    assert collector.stop() == 0
    data = json.loads((data_dir / "flows" / "exporters.json").read_text())
    rows = {row["exporter"]: row for row in data["exporters"]}
    assert rows["127.0.0.1"]["sequence_gaps"] == 30
    assert rows["::1"]["flows"] == 5
    assert set(data["kernel_drops"]) == {f"127.0.0.1:{port4}", f"[::1]:{port6}"}


def test_busy_port_is_an_error_naming_the_key(data_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        busy = blocker.getsockname()[1]
        free = free_port(socket.SOCK_DGRAM)
        result = subprocess.run(
            [
                *lanalyze_cmd(),
                *("flows", "collect", "--data", str(data_dir)),
                *("--listen", f"127.0.0.1:{free}", "--listen", f"127.0.0.1:{busy}"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3
    assert "flows.listen[1]" in result.stderr and str(busy) in result.stderr


def test_bad_listen_address_is_a_usage_error(data_dir: Path) -> None:
    result = subprocess.run(
        [*lanalyze_cmd(), "flows", "collect", "--data", str(data_dir), "--listen", "nohost:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nohost" in result.stderr


def test_component_metrics_report_worker_counters(data_dir: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    config = FlowsConfig(listen=[f"127.0.0.1:{port}"], workers=1, flush_interval=0.2)

    async def scenario() -> str:
        collector = FlowCollector(config, data_dir)
        await collector.start()
        try:
            await asyncio.to_thread(send, port, [v5_datagram(i * 30, 0) for i in range(4)])
            await asyncio.to_thread(send, port, [b"\x00\x05short"])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                text = metrics.render().decode()
                if (
                    'lanalyze_flow_flows_total{exporter="127.0.0.1",observation_domain="0"} 120'
                    in (text)
                    and "lanalyze_flow_store_rows_total 120" in text
                ):
                    return text
                await asyncio.sleep(0.1)
            return metrics.render().decode()
        finally:
            await collector.stop()

    text = asyncio.run(scenario())
    assert 'lanalyze_flow_packets_total{exporter="127.0.0.1",observation_domain="0"} 4' in text
    assert 'lanalyze_flow_flows_total{exporter="127.0.0.1",observation_domain="0"} 120' in text
    assert 'lanalyze_flow_decode_errors_total{exporter="127.0.0.1",observation_domain="0"} 1' in (
        text
    )
    assert f'lanalyze_flow_kernel_drops_total{{listen="127.0.0.1:{port}"}} 0' in text
    assert "lanalyze_flow_store_rows_total 120" in text
    assert "lanalyze_flow_datagrams_received_total 5" in text
    # Stopped: its series are gone from the registry.
    assert "lanalyze_flow_flows_total{" not in metrics.render().decode()


def test_a_dead_worker_is_replaced_and_counters_do_not_go_back(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lanalyze.flows import collector as collector_module

    monkeypatch.setattr(collector_module, "RESPAWN_MIN_SECONDS", 0.0)
    monkeypatch.setattr(collector_module, "EXPORTERS_WRITE_INTERVAL", 0.2)
    port = free_port(socket.SOCK_DGRAM)
    config = FlowsConfig(listen=[f"127.0.0.1:{port}"], workers=1, flush_interval=0.2)

    def flows_counted(collector: FlowCollector) -> int:
        return sum(row.flows for row in collector.totals().exporters)

    async def scenario() -> int:
        collector = FlowCollector(config, data_dir)
        await collector.start()
        try:
            await asyncio.to_thread(send, port, [v5_datagram(0, 0)])
            await asyncio.to_thread(wait_until, lambda: flows_counted(collector) == 30, 15)
            await asyncio.to_thread(wait_until, lambda: stored(data_dir) == 30, 15)
            first = collector._workers[0].process
            first.kill()  # as the OOM killer would
            await asyncio.to_thread(first.join, 10)
            deadline = time.monotonic() + 30
            while collector._workers[0].process is first or not collector._workers[0].last:
                assert time.monotonic() < deadline, "worker not replaced"
                await asyncio.sleep(0.1)
            await asyncio.to_thread(send, port, [v5_datagram(30, 30)])
            await asyncio.to_thread(wait_until, lambda: flows_counted(collector) == 60, 15)
            return flows_counted(collector)
        finally:
            await collector.stop()

    assert asyncio.run(scenario()) == 60
    assert stored(data_dir) == 60


def test_configured_sampling_rate_is_stored_with_the_flows(data_dir: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    config = FlowsConfig(
        listen=[f"127.0.0.1:{port}"],
        workers=1,
        flush_interval=0.2,
        sampling_rates={"127.0.0.1": 100, "192.0.2.1": 5},
    )

    async def scenario() -> None:
        collector = FlowCollector(config, data_dir)
        await collector.start()
        try:
            await asyncio.to_thread(send, port, [v5_datagram(0, 0, 10)])
            await asyncio.to_thread(wait_until, lambda: stored(data_dir) == 10, 15)
        finally:
            await collector.stop()

    asyncio.run(scenario())
    # The v5 header announces no sampling: the configured rate applies; raw counters kept.
    assert stored(data_dir, "min(sampling_rate)") == stored(data_dir, "max(sampling_rate)") == 100
    assert stored(data_dir, "sum(packets)") == 30
