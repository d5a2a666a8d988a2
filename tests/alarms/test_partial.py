"""The workers' share of detection (alarms/partial.py) merged in the parent gives the same
alarms as the parent's detector on the flows themselves: every attack, split over two
workers' reducers (sans-IO: Arrow batches in, reports out; the collector end to end is in
test_detect_collector.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pyarrow as pa

from lanalyze.alarms.config import AlarmsConfig, FloodConfig, MassMailerConfig, ScanConfig
from lanalyze.alarms.detect import BadNetworks, Detector, Finding
from lanalyze.alarms.partial import Reducer

NOW = 1_700_000_000_000  # a multiple of every window below: no test straddles one


def mapped(addresses: list[str]) -> pa.Array:
    return pa.array([ipaddress.IPv6Address(f"::ffff:{a}").packed for a in addresses], pa.binary(16))


def flows(
    src: list[str],
    dst: list[str],
    *,
    sport: int = 40000,
    dports: list[int] | None = None,
    packets: int = 1,
    size: int = 60,
    proto: int = 6,
    flags: int = 0x02,
) -> pa.Table:
    n = len(src)
    return pa.table(
        {
            "exporter": mapped(["192.0.2.1"] * n),
            "sampling_rate": pa.array(np.ones(n, np.uint32)),
            "bytes": pa.array(np.full(n, size * packets, np.uint64)),
            "packets": pa.array(np.full(n, packets, np.uint64)),
            "flows": pa.array(np.ones(n, np.uint64)),
            "src_addr": mapped(src),
            "dst_addr": mapped(dst),
            "src_port": pa.array(np.full(n, sport, np.uint16)),
            "dst_port": pa.array(np.array(dports or [80] * n, np.uint16)),
            "protocol": pa.array(np.full(n, proto, np.uint8)),
            "tcp_flags": pa.array(np.full(n, flags, np.uint8)),
        }
    )


def attacks() -> list[pa.Table]:
    """Twelve batches: ordinary conversations, and every flow algorithm's attack spread over
    them (so over both workers), plus the same below its threshold from another subject."""
    rng = np.random.default_rng(5)
    batches = []
    for i in range(12):
        quiet = [f"10.2.{rng.integers(0, 250)}.{rng.integers(1, 250)}" for _ in range(300)]
        peers = [f"198.18.{rng.integers(0, 250)}.{rng.integers(1, 250)}" for _ in range(300)]
        parts = [
            flows(quiet, peers, flags=0x1B, packets=20),  # conversations: ACK
            # horizontal scan: 15 new hosts a batch (180), and 4 (48) from another source
            flows(["10.9.0.1"] * 15, [f"203.0.113.{15 * i + k}" for k in range(15)]),
            flows(["10.9.0.2"] * 4, [f"203.0.114.{4 * i + k}" for k in range(4)]),
            # vertical scan: 15 ports a batch
            flows(
                ["10.9.0.3"] * 15, ["198.51.100.7"] * 15, dports=[15 * i + k + 1 for k in range(15)]
            ),
            # flood: 2 000 packets a batch to one target (24 000 in the window: 2 400 pps)
            flows(
                [f"10.3.0.{k + 1}" for k in range(20)], ["192.0.2.99"] * 20, packets=100, flags=0x18
            ),
            flows(["10.3.1.1"] * 2, ["192.0.2.98"] * 2, packets=100, flags=0x18),
            # SYN flood: 100 SYN flows a batch (1 200 in the window: 120 a second)
            flows([f"10.4.{k}.1" for k in range(100)], ["192.0.2.77"] * 100),
            # reflection: NTP answers of 1 000 bytes a packet
            flows(
                [f"100.70.{k}.1" for k in range(10)],
                ["192.0.2.55"] * 10,
                sport=123,
                packets=50,
                size=1000,
                proto=17,
            ),
            # mass mailer: 6 outside mail servers a batch (72)
            flows(
                ["10.5.0.9"] * 6,
                [f"198.19.{i}.{k + 1}" for k in range(6)],
                dports=[25] * 6,
                flags=0x1B,
            ),
            # a listed network
            flows(["100.64.0.9"], ["10.2.0.1"], flags=0x1B),
        ]
        batches.append(pa.concat_tables(parts))
    return batches


CONFIG = AlarmsConfig(
    scan=ScanConfig(horizontal_hosts=100, vertical_ports=100),
    flood=FloodConfig(pps=1000, fps=1_000_000, syn_fps=100, reflection_bps=100_000, window=10),
    mass_mailer=MassMailerConfig(hosts=50),
)


def subjects(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.algorithm, f.subject) for f in findings}


def test_worker_reports_merged_give_the_detectors_alarms() -> None:
    bad = BadNetworks(["100.64.0.0/24"])
    reference = Detector(CONFIG)
    reference.bad = bad
    parent = Detector(CONFIG)
    parent.bad = bad
    workers = [Reducer(CONFIG, 2), Reducer(CONFIG, 2)]
    for reducer in workers:
        reducer._bad = bad  # the file's networks (the file itself: the collector test)
    expected: list[Finding] = []
    merged: list[Finding] = []
    for i, table in enumerate(attacks()):
        now = NOW + 500 * i
        expected += reference.process(now, table)
        reducer = workers[i % 2]
        for batch in table.to_batches():
            reducer.add(now, batch)
        partial = reducer.take(now)
        assert partial is not None and partial.flows == table.num_rows
        assert partial.rows.num_rows < table.num_rows // 2  # conversations stay in the worker
        merged += parent.merge(now, partial)
    want = {
        ("scan_horizontal", "10.9.0.1 tcp/80"),
        ("scan_vertical", "10.9.0.3 -> 198.51.100.7"),
        ("flood", "192.0.2.99"),
        ("syn_flood", "192.0.2.77"),
        ("udp_reflection", "192.0.2.55"),
        ("mass_mailer", "10.5.0.9"),
        ("bad_network", "100.64.0.9"),
    }
    assert subjects(expected) == want
    assert subjects(merged) == want
    # Distinct counts are exact in both: the same values.
    last = {(f.algorithm, f.subject): f.value for f in merged if "scan" in f.algorithm}
    assert last == {(f.algorithm, f.subject): f.value for f in expected if "scan" in f.algorithm}
    assert parent.exporters.keys() == {"192.0.2.1"}
    # The parent's flood sketch is the sum of the workers' (float32 reports of integers).
    assert np.array_equal(parent.flood.sums, reference.flood.sums)


def test_engine_queue_of_reports_is_bounded_in_bytes(tmp_path: Path) -> None:
    # The reports wait for the engine's next round in a queue of at most
    # alarms.state_memory bytes; beyond, they are dropped and counted, not held.
    from lanalyze import metrics
    from lanalyze.alarms.engine import AlarmEngine

    config = AlarmsConfig(state_memory=2**20)
    engine = AlarmEngine(config, tmp_path)
    reducer = Reducer(config, 1)
    for batch in attacks()[0].to_batches():
        reducer.add(NOW, batch)
    partial = reducer.take(NOW)
    assert partial is not None and partial.nbytes > 2**19  # the flood sketches' counts
    labels = {"outcome": "dropped"}
    before = metrics.REGISTRY.get_sample_value("lanalyze_alarm_worker_reports_total", labels) or 0
    engine.feed(partial)  # the first is always taken
    engine.feed(partial)
    engine.feed(partial)
    after = metrics.REGISTRY.get_sample_value("lanalyze_alarm_worker_reports_total", labels)
    assert after == before + 2
    assert len(engine._take_reports()) == 1
