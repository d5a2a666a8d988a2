"""Collectors writing to the two-shard ClickHouse cluster (tests/clickhouse.py), end to end.

* Two `lanalyze flows collect` processes (two hosts' worth: own data directories, one
  database) receive softflowd's replay of the same capture as NetFlow v9 and IPFIX; per
  source address, the flows, packets and bytes in ClickHouse equal what nfdump counts from
  nfcapd fed the same two exports.
* ClickHouse stopped during ingest: the collector keeps receiving into its spool (seen in
  exporters.json), and after the restart every flow is in ClickHouse exactly once.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clickhouse import PASSWORD, USER, ClickHouseCluster
from tests.conftest import free_port, lanalyze_cmd, require_tool
from tests.flows.test_collect import send, v5_datagram, wait_until
from tests.flows.test_softflowd import (
    Totals,
    nfcapd_collect,
    nfdump_totals,
    replay,
    udp_queue_empty,
    write_capture,
)


class ClickHouseCollector:
    """`lanalyze --config <toml> flows collect` with ``[flows.store] backend = "clickhouse"``."""

    def __init__(self, root: Path, cluster: ClickHouseCluster, database: str, port: int) -> None:
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True)
        servers = ", ".join(f'"{host}:{p}"' for host, p in cluster.hosts)
        self.config = root / "lanalyze.toml"
        self.config.write_text(
            f'[flows.store]\nbackend = "clickhouse"\nservers = [{servers}]\n'
            f'database = "{database}"\nuser = "{USER}"\npassword = "{PASSWORD}"\n'
            "retry_interval = 0.2\nconnect_timeout = 1.0\n"
        )
        self.log_path = root / "collect.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *lanalyze_cmd(),
                *("--config", str(self.config), "flows", "collect"),
                *("--data", str(self.data_dir), "--workers", "1"),
                *("--listen", f"127.0.0.1:{port}"),
            ],
            stdout=self.log_file,
            stderr=self.log_file,
        )
        self.port = port

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}: {self.log}")
            return "event=flows.ready" in self.log

        wait_until(ready, 60, "collector ready")

    def store_stats(self) -> dict[str, int]:
        path = self.data_dir / "flows" / "exporters.json"
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text())["store"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log_file.close()


@pytest.fixture
def collectors() -> Iterator[list[ClickHouseCollector]]:
    started: list[ClickHouseCollector] = []
    yield started
    for collector in started:
        if collector.proc.poll() is None:
            collector.proc.kill()
            collector.proc.wait()
        collector.log_file.close()


def clickhouse_totals(cluster: ClickHouseCluster, database: str) -> Totals:
    rows = cluster.execute(
        0,
        f"SELECT hex(src_addr), sum(flows), sum(packets), sum(bytes) FROM {database}.flows"
        " GROUP BY src_addr",
    )
    totals: Totals = {}
    for raw, flows, packets, octets in rows:
        address = ipaddress.IPv6Address(bytes.fromhex(raw))
        totals[str(address.ipv4_mapped or address)] = (int(flows), int(packets), int(octets))
    return totals


def stored(cluster: ClickHouseCluster, database: str) -> int:
    return int(cluster.execute(0, f"SELECT count() FROM {database}.flows")[0][0])


def test_two_collectors_into_two_shards_match_nfdump(
    clickhouse_cluster: ClickHouseCluster,
    clickhouse_db: str,
    tmp_path: Path,
    collectors: list[ClickHouseCollector],
) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    softflowd = require_tool("softflowd")
    nfdump = require_tool("nfdump")
    capture = tmp_path / "flows.pcap"
    flows = write_capture(capture, flows_v4=600, flows_v6=300)

    expected: Totals = {}
    for version in (9, 10):
        workdir = tmp_path / f"nfcapd-v{version}"
        workdir.mkdir()
        directory, _ = nfcapd_collect(capture, version, workdir)
        for address, (f, p, b) in nfdump_totals(nfdump, directory).items():
            old = expected.get(address, (0, 0, 0))
            expected[address] = (old[0] + f, old[1] + p, old[2] + b)
    assert sum(f for f, _, _ in expected.values()) == 2 * flows

    for version in (9, 10):
        collector = ClickHouseCollector(
            tmp_path / f"collector-v{version}", ch, db, free_port(socket.SOCK_DGRAM)
        )
        collectors.append(collector)
    for collector, version in zip(collectors, (9, 10), strict=True):
        collector.wait_ready()
        replay(softflowd, capture, collector.port, version, tmp_path)
    wait_until(lambda: stored(ch, db) >= 2 * flows, 60, f"{2 * flows} flows in ClickHouse")
    for collector in collectors:
        assert collector.stop() == 0, collector.log
        assert "flows.clickhouse_schema" in collector.log
        assert PASSWORD not in collector.log
    assert clickhouse_totals(ch, db) == expected
    # the rollup views saw every flow (the spread over shards: test_clickhouse_store.py)
    assert int(ch.execute(0, f"SELECT sum(flows) FROM {db}.rollup_1m_summary")[0][0]) == 2 * flows
    # nothing went to the Parquet store
    assert not list((tmp_path / "collector-v9" / "data" / "flows").glob("raw/*/*.parquet"))


def test_clickhouse_stopped_during_ingest_every_flow_arrives_once(
    clickhouse_cluster: ClickHouseCluster,
    clickhouse_db: str,
    tmp_path: Path,
    collectors: list[ClickHouseCollector],
) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    port = free_port(socket.SOCK_DGRAM)
    collector = ClickHouseCollector(tmp_path / "collector", ch, db, port)
    collectors.append(collector)
    collector.wait_ready()
    send(port, [v5_datagram(i * 30, i * 30) for i in range(20)])
    wait_until(lambda: stored(ch, db) == 600, 30, "first 600 flows stored")

    for shard in (0, 1):
        ch.stop(shard)
    try:
        send(port, [v5_datagram(i * 30, i * 30) for i in range(20, 60)])
        wait_until(lambda: udp_queue_empty(port), 20, "collector read everything")
        # received and spooled while ClickHouse is down
        wait_until(
            lambda: collector.store_stats().get("spool_segments", 0) > 0, 30, "batches spooled"
        )
        spool = collector.data_dir / "flows" / "spool" / "worker-0"
        assert any(spool.glob("*.arrow"))
    finally:
        for shard in (0, 1):
            ch.start(shard)

    def replayed() -> bool:
        stats = collector.store_stats()
        return stats.get("spool_segments", 1) == 0 and stored(ch, db) >= 1800

    wait_until(replayed, 60, "spool replayed")
    assert not any(spool.glob("*.arrow"))
    assert stored(ch, db) == 1800
    assert int(ch.execute(0, f"SELECT uniqExact(src_addr) FROM {db}.flows")[0][0]) == 1800
    assert collector.stop() == 0, collector.log
    assert "flows.clickhouse_failed" in collector.log
    stats = collector.store_stats()
    assert stats["spooled"] > 0 and stats["spool_dropped_rows"] == 0
    assert stats["replayed"] + stats["duplicates"] == stats["spooled"]
    assert stored(ch, db) == 1800


def test_collector_refuses_a_different_schema(
    clickhouse_cluster: ClickHouseCluster,
    clickhouse_db: str,
    tmp_path: Path,
    collectors: list[ClickHouseCollector],
) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    ch.execute(0, f"CREATE TABLE {db}.flows_local (x UInt8) ENGINE = MergeTree ORDER BY x")
    collector = ClickHouseCollector(tmp_path / "c", ch, db, free_port(socket.SOCK_DGRAM))
    collectors.append(collector)
    assert collector.proc.wait(timeout=60) == 3
    assert "flows_local: column time_received missing" in collector.log
    assert "lanalyze flows schema --backend clickhouse" in collector.log
