"""Baseline deviation: a host's hour against the same hour of past weeks. A week cannot be
replayed through a live collector in a test, so the detector is given stored-flow batches
with the times it would have seen them at."""

from __future__ import annotations

import ipaddress

import numpy as np

from lanalyze.alarms.config import AlarmsConfig, DeviationConfig
from lanalyze.alarms.detect import HOUR_MS, Detector
from lanalyze.flows import catalogue
from lanalyze.flows.store.synthetic import to_table, v4_addresses

HOUR = 480_000  # an hour since the epoch (a Thursday)


def batch(flows: list[tuple[str, str, int]]) -> object:
    columns = catalogue.empty_batch(len(flows))
    ip = [int(ipaddress.IPv4Address(a)) for a, _, _ in flows]
    columns["src_addr"][:] = v4_addresses(np.array(ip, np.uint32))
    ip = [int(ipaddress.IPv4Address(b)) for _, b, _ in flows]
    columns["dst_addr"][:] = v4_addresses(np.array(ip, np.uint32))
    columns["bytes"][:] = [n for _, _, n in flows]
    columns["packets"][:] = [max(1, n // 1000) for _, _, n in flows]
    columns["flows"][:] = 1
    columns["protocol"][:] = 6
    columns["tcp_flags"][:] = 0x1B
    columns["src_port"][:] = 50000
    columns["dst_port"][:] = 443
    columns["exporter"][:] = v4_addresses(np.array([0xC0000201] * len(flows), np.uint32))
    return to_table(columns)


def test_a_host_far_above_its_hour_of_the_week() -> None:
    config = AlarmsConfig(
        deviation=DeviationConfig(enabled=True, factor=10, min_bytes=1_000_000, weeks=1)
    )
    detector = Detector(config)
    usual = [("10.0.0.1", "203.0.113.1", 2_000_000), ("10.0.0.4", "203.0.113.4", 2_000_000)]
    assert detector.process(HOUR * HOUR_MS + 1000, batch(usual)) == []
    # The next hour closes this one: its sums become the baseline of its hour of the week.
    assert detector.process((HOUR + 1) * HOUR_MS + 1000, batch(usual)) == []
    # A week later, the same hour: 10.0.0.1 moves 25 times its usual, 10.0.0.4 7.5 times.
    later = (HOUR + 168) * HOUR_MS + 1000
    findings = detector.process(
        later,
        batch([("10.0.0.1", "203.0.113.9", 50_000_000), ("10.0.0.4", "203.0.113.4", 15_000_000)]),
    )
    subjects = {f.subject for f in findings if f.algorithm == "host_deviation"}
    # 203.0.113.9 is new: no history, and it is judged too (50 MB against no baseline).
    assert subjects == {"10.0.0.1", "203.0.113.9"}
    [host] = [f for f in findings if f.subject == "10.0.0.1"]
    assert host.value == 50_000_000 and host.evidence["baseline_bytes"] == 2_000_000
    # Survives a snapshot.
    again = Detector(config)
    again.restore(detector.snapshot())
    assert again.deviation is not None and again.deviation.learnt.sum() == 1
