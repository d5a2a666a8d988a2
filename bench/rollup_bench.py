"""Rollup maintainer speed: flows rolled up per second, against the ingest rate it must follow.

    .venv/bin/python bench/rollup_bench.py [--flows 10M] [--rate 3M] [--runs 3]

N flows (65,536 sources and 65,536 destinations, uniform: the worst case for the address
tables) are written as the collector writes them at ``--rate`` flows/s of receive time: LZ4
Parquet segments without dictionary encoding, one per worker (2) and second. Then, each run on
a fresh copy of the rollup state, the maintainer (``RollupMaintainer.run_once``) rolls them up
as fresh segments (the hour still open: minute and hour parts, manifest), and a second round
an hour later closes the hour (compaction of parts and raw segments, 6-hour and day parts).
Printed per run: wall and CPU time (``time.process_time``: the maintainer runs in this
process, DuckDB threads included), flows per second of each, medians.

The peer figure is nfcapd's lossless NetFlow v5 ingest on this machine, 3.0 M flows/s (median
of three quiet-machine runs of ``bench/ingest_bench.py``, docs/performance.md "Flow ingest"),
and its CPU per flow there, 0.27 µs (3.7 M flows per CPU second): a maintainer slower than
that falls behind a collector running at nfcapd's rate, and reports read raw flows again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lanalyze.flows import catalogue  # noqa: E402
from lanalyze.flows.config import RollupConfig  # noqa: E402
from lanalyze.flows.store.layout import HOUR_MS  # noqa: E402
from lanalyze.flows.store.rollup import RollupMaintainer  # noqa: E402
from lanalyze.flows.store.synthetic import random_flows  # noqa: E402
from lanalyze.flows.store.writer import SegmentWriter  # noqa: E402

PEER_RATE = 3.0e6  # nfcapd, v5, lossless, flows/s (docs/performance.md, Flow ingest)
PEER_CPU_RATE = 1 / 0.27e-6  # nfcapd, flows per CPU second at that rate
WORKERS = 2
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS + 5 * 60_000  # 5 min into an hour


def _count(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
    text = text.strip().lower()
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(float(text))


def generate(raw_copy: Path, flows: int, rate: int) -> dict[str, object]:
    """Write the segments once (kept as a pristine copy between runs)."""
    seconds = max(1, -(-flows // rate))
    per_segment = -(-flows // (seconds * WORKERS))
    written = 0
    seq = 0
    schema = catalogue.batch_schema()
    # The collector's own writer (its encodings included), one per worker as in the collector.
    writers = [
        SegmentWriter(raw_copy, f"w{worker}xbench", compression="lz4") for worker in range(WORKERS)
    ]
    for second in range(seconds):
        for worker in range(WORKERS):
            rows = min(per_segment, flows - written)
            if rows <= 0:
                break
            start = T0 + second * 1000
            columns = random_flows(
                rows,
                start,
                start + 1000,
                seed=seq + 1,
                sources=65_536,
                destinations=65_536,
                exporters=4,
            )
            table = pa.Table.from_batches([catalogue.to_record_batch(columns)], schema=schema)
            writers[worker].write(table)
            written += rows
            seq += 1
    info = {"flows": written, "segments": seq, "seconds": seconds}
    (raw_copy / "generated.json").write_text(json.dumps(info))
    return info


def one_run(pristine: Path, work: Path) -> tuple[float, float, float, float, dict[str, int]]:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine / "raw", work / "raw")
    maintainer = RollupMaintainer(
        RollupConfig(raw_max_age=0, minute_max_age=0, hour_max_age=0), work
    )
    try:
        now = T0 / 1000 + 120
        wall, cpu = time.perf_counter(), time.process_time()
        done = maintainer.run_once(now=now)
        roll_wall, roll_cpu = time.perf_counter() - wall, time.process_time() - cpu
        # A day later: the hour closed, compacted (parts and raw), 6-hour and day parts built.
        wall, cpu = time.perf_counter(), time.process_time()
        later = maintainer.run_once(now=now + 86_400 + 3_600)
        close_wall, close_cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        maintainer.release()
    done.update({f"close_{k}": v for k, v in later.items()})
    return roll_wall, roll_cpu, close_wall, close_cpu, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", default="10M", help="flows to roll up (10M, 500k, ...)")
    parser.add_argument("--rate", default="3M", help="receive-time rate of the flows, flows/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "rollup")
    args = parser.parse_args()
    flows, rate = _count(args.flows), _count(args.rate)
    pristine = args.work / f"raw-{flows}-{rate}"
    info_path = pristine / "generated.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
    else:
        shutil.rmtree(pristine, ignore_errors=True)
        started = time.perf_counter()
        info = generate(pristine, flows, rate)
        print(f"generated {info} in {time.perf_counter() - started:.1f} s")
    flows = int(info["flows"])
    results = []
    for run in range(args.runs):
        roll_wall, roll_cpu, close_wall, close_cpu, done = one_run(pristine, args.work / "store")
        results.append((roll_wall, roll_cpu, close_wall, close_cpu))
        print(
            f"run {run + 1}: roll-up {roll_wall:.2f} s wall, {roll_cpu:.2f} s CPU "
            f"({flows / roll_wall / 1e6:.2f} M flows/s wall, "
            f"{flows / roll_cpu / 1e6:.2f} M/CPU s); "
            f"closing the hour {close_wall:.2f} s wall, {close_cpu:.2f} s CPU; {done}"
        )
    roll_wall, roll_cpu, close_wall, close_cpu = (
        statistics.median(r[i] for r in results) for i in range(4)
    )
    whole_wall, whole_cpu = roll_wall + close_wall, roll_cpu + close_cpu
    print(f"\n{flows:,} flows in {info['segments']} segments, medians of {args.runs} runs")
    print(f"{'':44} {'peer':>12} {'lanalyze':>12} {'ratio':>7}")
    rows = [
        ("roll-up, flows/s of wall time", PEER_RATE, flows / roll_wall),
        ("roll-up, flows per CPU second", PEER_CPU_RATE, flows / roll_cpu),
        ("roll-up + closing the hour, flows/s wall", PEER_RATE, flows / whole_wall),
        ("roll-up + closing the hour, flows/CPU s", PEER_CPU_RATE, flows / whole_cpu),
    ]
    for label, peer, ours in rows:
        print(f"{label:44} {peer / 1e6:10.2f} M {ours / 1e6:10.2f} M {ours / peer:7.2f}")
    print("peer: nfcapd's lossless v5 ingest on this machine (rate, and flows per CPU second)")


if __name__ == "__main__":
    main()
