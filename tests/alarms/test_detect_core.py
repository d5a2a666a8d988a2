"""The detector's core on hand-built batches (it is sans-IO: Arrow tables in, findings out,
so no peer is involved; the collector end to end is in test_detect_collector.py)."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

from lanalyze.alarms.config import AlarmsConfig, FloodConfig
from lanalyze.alarms.detect import Detector, DistinctWindow

NOW = 1_700_000_000_000


def mapped(addresses: list[str]) -> pa.Array:
    return pa.array([ipaddress.IPv6Address(f"::ffff:{a}").packed for a in addresses], pa.binary(16))


def table(src: list[str], dst: list[str], *, packets: int = 1, flags: int = 0x02) -> pa.Table:
    n = len(src)
    return pa.table(
        {
            "exporter": mapped(["192.0.2.1"] * n),
            "sampling_rate": pa.array(np.ones(n, np.uint32)),
            "bytes": pa.array(np.full(n, 60 * packets, np.uint64)),
            "packets": pa.array(np.full(n, packets, np.uint64)),
            "flows": pa.array(np.ones(n, np.uint64)),
            "src_addr": mapped(src),
            "dst_addr": mapped(dst),
            "src_port": pa.array(np.full(n, 40000, np.uint16)),
            "dst_port": pa.array(np.full(n, 80, np.uint16)),
            "protocol": pa.array(np.full(n, 6, np.uint8)),
            "tcp_flags": pa.array(np.full(n, flags, np.uint8)),
        }
    )


def test_flood_window_survives_restart_with_any_sketch_width() -> None:
    # The sketch is rounded up to a power of two; a fresh detector's counters once kept the
    # configured width until its first batch, so a snapshot (rounded) never matched it and a
    # restart dropped the flood windows of every width not a power of two.
    config = AlarmsConfig(flood=FloodConfig(sketch_width=100_000, pps=1000, fps=100, window=10))
    detector = Detector(config)
    n = 20_000
    flood = table([f"10.1.{i // 250}.{i % 250 + 1}" for i in range(n)], ["192.0.2.99"] * n)
    findings = detector.process(NOW, flood)
    assert [f.subject for f in findings if f.algorithm == "flood"] == ["192.0.2.99"]
    restarted = Detector(config)
    restarted.restore(detector.snapshot())
    assert restarted.flood.started == detector.flood.started
    assert np.array_equal(restarted.flood.sums, detector.flood.sums)


def test_distinct_window_counts_exactly_across_levels_and_restore() -> None:
    # Many batches of new pairs: the recent level folds into the main one several times;
    # every key's count stays the exact number of distinct items it was seen with, also
    # after a snapshot (one level) restored into a fresh window.
    rng = np.random.default_rng(3)
    window = DistinctWindow(3600, 1 << 30)
    window.FOLD_MIN = 1 << 10  # fold often on small data
    seen: dict[int, set[int]] = {}
    keys = rng.integers(0, 2**63, 50).astype(np.uint64)
    for step in range(40):
        if step == 20:
            restored = DistinctWindow(3600, 1 << 30)
            restored.restore("w", window.state("w"))
            restored.FOLD_MIN = 1 << 10
            window = restored
        key = keys[rng.integers(0, keys.size, 2000)]
        item = rng.integers(0, 150, 2000).astype(np.uint64)  # few: no 24-bit collisions
        touched, counts = window.add(NOW + step, key, item)
        short = DistinctWindow.key_of(key)
        before = {k: len(v) for k, v in seen.items()}
        for k, i in zip(short.tolist(), item.tolist(), strict=True):
            seen.setdefault(k, set()).add(i)
        grew = {k: len(v) for k, v in seen.items() if len(v) != before.get(k, 0)}
        # The keys that gained an item, each with its exact count.
        assert dict(zip(touched.tolist(), counts.tolist(), strict=True)) == grew
    state = window.state("w")
    assert window.recent_pairs.size == 0
    assert dict(zip(state["w.keys"].tolist(), state["w.counts"].tolist(), strict=True)) == {
        k: len(v) for k, v in seen.items()
    }
    assert state["w.pairs"].size == sum(len(v) for v in seen.values())
    assert np.all(np.diff(state["w.pairs"].astype(np.float64)) >= 0)
