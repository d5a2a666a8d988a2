"""Detection's cost on ingest, its alarm latency, and its memory with 1 M distinct sources.

1. **Ingest cost**: `lanalyze flows collect` at a fixed paced rate (NetFlow v5 from
   ``ingest_bench``'s sender), alternately with ``alarms.enabled`` false and true, the
   collector's CPU (all its processes, start-up and idle subtracted as in ``ingest_bench``)
   per stored flow, and the loss; with ``--lossless`` also the highest lossless rate of each.
2. **Alarm latency**: with detection on (default ``alarms.interval`` 1 s, ``flows.flush_interval``
   1 s) a horizontal scan of 150 hosts is sent; the time until its alarm is in the store.
3. **Memory**: the detector alone (default settings, 64 MiB budget), fed 1 M flows from 1 M
   distinct sources (10 batches of 100 000, each flow to a random host and port); its state
   bytes, the keys it forgot, the process's peak RSS growth, and its CPU time per flow.
4. **Detector** (``--only detector``): detection's own CPU per flow in one process, a
   minute of segments written as the collector writes them (``ingest_bench``'s flow mix) and
   read back as the engine reads them: read-back and detection apart. CPU time, not the wall
   clock: on a shared machine it is the figure that survives the load.

    .venv/bin/python bench/detect_bench.py --runs 3 --rate 0.25
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import (
    RECEIVE_BUFFER,
    Outcome,
    children_cpu,
    free_udp_port,
    highest_lossless,
    port_drops,
    port_sockets,
    send_paced,
    wait_drained,
)


def run_collector(
    rate: float, duration: float, senders: int, workers: int, alarms: bool
) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    port = free_udp_port()
    config = work / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{work / "data"}"\nlog_level = "warning"\n'
        f'[flows]\nlisten = ["127.0.0.1:{port}"]\nreceive_buffer = {RECEIVE_BUFFER}\n'
        f"workers = {workers}\n[alarms]\nenabled = {'true' if alarms else 'false'}\n"
    )
    exe = Path(sys.executable).parent / "lanalyze"
    cpu0 = children_cpu()
    try:
        with open(work / "collect.log", "w") as log_file:
            proc = subprocess.Popen(
                [str(exe), "--config", str(config), "flows", "collect"],
                stdout=log_file,
                stderr=log_file,
            )
            deadline = time.monotonic() + 60
            while len(port_sockets(port)) < max(1, workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            sent, seconds, sender_cpu = send_paced("v5", port, rate, duration, senders)
            wait_drained(port)
            # The detector looks every second: give it the last segments before the stop.
            time.sleep(2.5)
            drops = port_drops(port)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        files = list((work / "data" / "flows" / "raw").glob("*/*.parquet"))
        stored = sum(pq.read_metadata(f).num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
        return Outcome(sent, stored, drops, size, seconds, children_cpu() - cpu0 - sender_cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ingest_cost(args: argparse.Namespace) -> None:
    print(f"== ingest CPU per flow at {args.rate} M flows/s, {args.duration} s, v5")
    idle = {on: run_collector(30.0, 2.0, 1, args.workers, on) for on in (False, True)}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for run in range(args.runs):
        for on in (False, True):
            outcome = run_collector(args.rate * 1e6, args.duration, 2, args.workers, on)
            per_flow = (outcome.cpu_seconds - idle[on].cpu_seconds) / max(1, outcome.stored)
            cpu[on].append(per_flow)
            print(
                f"  run {run + 1} alarms {'on ' if on else 'off'}: sent {outcome.sent} stored "
                f"{outcome.stored} loss {outcome.loss:.3%} CPU {per_flow * 1e6:.3f} us/flow",
                flush=True,
            )
    off, on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(
        f"  median: off {off * 1e6:.3f} us/flow, on {on * 1e6:.3f} us/flow, "
        f"detection costs {(on / off - 1):+.1%}"
    )
    if args.lossless:
        rates = [float(r) * 1e6 for r in args.rates.split(",")]
        for on in (False, True):
            best, _, per_flow = highest_lossless(
                f"alarms {'on' if on else 'off'}",
                "v5",
                rates,
                lambda rate, on=on: run_collector(rate, args.duration, 2, args.workers, on),
            )
            print(f"  highest lossless, alarms {'on' if on else 'off'}: {best / 1e6:.2f} M/s")


def latency(args: argparse.Namespace) -> None:
    print("== alarm latency (scan of 150 hosts, default interval and flush)")
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    port = free_udp_port()
    data = work / "data"
    config = work / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{data}"\nlog_level = "warning"\n'
        f'[flows]\nlisten = ["127.0.0.1:{port}"]\nworkers = 1\n'
    )
    exe = Path(sys.executable).parent / "lanalyze"
    from lanalyze.alarms.store import AlarmQuery, AlarmStore

    seen: list[float] = []
    with open(work / "collect.log", "w") as log_file:
        proc = subprocess.Popen(
            [str(exe), "--config", str(config), "flows", "collect"],
            stdout=log_file,
            stderr=log_file,
        )
        try:
            time.sleep(4)
            for attempt in range(args.latency_runs):
                source = f"10.77.0.{attempt + 1}"
                datagrams = scan_datagrams(source, 150)
                started = time.monotonic()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    for datagram in datagrams:
                        sock.sendto(datagram, ("127.0.0.1", port))
                while True:
                    store = AlarmStore.open_readonly(data)
                    if store is not None:
                        with store:
                            rows = store.search(AlarmQuery(subject=source)).rows
                        if rows:
                            break
                    time.sleep(0.01)
                seen.append(time.monotonic() - started)
                print(f"  scan {attempt + 1}: alarm after {seen[-1]:.2f} s", flush=True)
                time.sleep(0.37)  # not in step with the detector's 1 s
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            shutil.rmtree(work, ignore_errors=True)
    print(f"  median {statistics.median(seen):.2f} s, max {max(seen):.2f} s")


def scan_datagrams(source: str, hosts: int) -> list[bytes]:
    out = []
    now = time.time()
    src = socket.inet_aton(source)
    for start in range(0, hosts, 30):
        count = min(30, hosts - start)
        header = struct.pack(">HHIIIIBBH", 5, count, 600_000, int(now), 0, start, 0, 0, 0)
        records = b"".join(
            struct.pack(
                ">4s4s4sHHIIIIHHBBBBHHBBH",
                src,
                bytes([203, 0, 113 + (start + i) // 250, (start + i) % 250 + 1]),
                bytes(4),
                *(1, 2, 1, 60, 590_000, 595_000, 40000 + i, 22, 0, 2, 6, 0, 0, 0, 24, 24, 0),
            )
            for i in range(count)
        )
        out.append(header + records)
    return out


def memory(args: argparse.Namespace) -> None:
    from lanalyze.alarms.config import AlarmsConfig
    from lanalyze.alarms.detect import Detector

    print("== detector memory, 1 M distinct sources")
    from lanalyze.alarms.partial import Reducer

    rng = np.random.default_rng(7)
    detector = Detector(AlarmsConfig())
    # The way it runs now: two workers' reducers (alternate batches), merged in a parent.
    workers = [Reducer(AlarmsConfig(), 2), Reducer(AlarmsConfig(), 2)]
    parent = Detector(AlarmsConfig())
    report_bytes = 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batch = 100_000
    now = int(time.time() * 1000)
    spent = 0.0
    for index in range(10):
        n = batch
        sources = np.arange(index * n, (index + 1) * n, dtype=np.uint64) + 0x0B000000
        table = pa.table(
            {
                "exporter": mapped(np.full(n, 0xC0000201, np.uint64)),
                "sampling_rate": pa.array(np.ones(n, np.uint32)),
                "bytes": pa.array(rng.integers(40, 1500, n).astype(np.uint64)),
                "packets": pa.array(np.ones(n, np.uint64)),
                "flows": pa.array(np.ones(n, np.uint64)),
                "src_addr": mapped(sources),
                "dst_addr": mapped(rng.integers(0, 2**32, n).astype(np.uint64)),
                "src_port": pa.array(rng.integers(1024, 65535, n).astype(np.uint16)),
                "dst_port": pa.array(rng.integers(1, 1024, n).astype(np.uint16)),
                "protocol": pa.array(np.full(n, 6, np.uint8)),
                "tcp_flags": pa.array(np.full(n, 2, np.uint8)),
            }
        )
        started = time.process_time()
        detector.process(now, table)
        spent += time.process_time() - started
        reducer = workers[index % 2]
        for record_batch in table.to_batches(max_chunksize=12_500):
            reducer.add(now, record_batch)
        partial = reducer.take(now)
        assert partial is not None
        report_bytes = max(report_bytes, partial.nbytes)
        parent.merge(now, partial)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    budget = AlarmsConfig().state_memory / 2**20
    print(
        f"  state {detector.nbytes / 2**20:.1f} MiB (distinct-count budget {budget:.0f} MiB), "
        f"keys forgotten {detector.evicted()}, peak RSS growth {rss / 1024:.0f} MiB, "
        f"{spent / (10 * batch) * 1e6:.2f} us/flow in the detector (every flow a new "
        "source's SYN: the worst case)"
    )
    print(
        f"  split (2 workers, a report per 100 000 flows): parent state "
        f"{parent.nbytes / 2**20:.1f} MiB, keys forgotten {parent.evicted()}; each worker's "
        f"sketches {workers[0].local.nbytes / 2**20:.1f} MiB; largest report "
        f"{report_bytes / 2**20:.1f} MiB (peak RSS above includes both paths)"
    )
    # Ordinary traffic: conversations (ACK set) among 65 536 hosts, as ingest_bench sends.
    detector = Detector(AlarmsConfig())
    spent = 0.0
    for _ in range(10):
        n = batch
        table = pa.table(
            {
                "exporter": mapped(np.full(n, 0xC0000201, np.uint64)),
                "sampling_rate": pa.array(np.ones(n, np.uint32)),
                "bytes": pa.array(rng.integers(40, 150_000, n).astype(np.uint64)),
                "packets": pa.array(rng.integers(1, 100, n).astype(np.uint64)),
                "flows": pa.array(np.ones(n, np.uint64)),
                "src_addr": mapped(0x0A000000 + rng.integers(0, 65536, n).astype(np.uint64)),
                "dst_addr": mapped(0xC0A80000 + rng.integers(0, 65536, n).astype(np.uint64)),
                "src_port": pa.array(rng.integers(1024, 65535, n).astype(np.uint16)),
                "dst_port": pa.array(rng.choice([22, 53, 80, 443, 8080], n).astype(np.uint16)),
                "protocol": pa.array(np.full(n, 6, np.uint8)),
                "tcp_flags": pa.array(np.full(n, 0x1B, np.uint8)),
            }
        )
        started = time.process_time()
        detector.process(now, table)
        spent += time.process_time() - started
    print(f"  ordinary traffic: {spent / (10 * batch) * 1e6:.2f} us/flow in the detector")


def mapped(addresses: np.ndarray) -> pa.Array:
    """IPv4 numbers as 16-byte IPv4-mapped addresses (the store's form)."""
    raw = np.zeros((addresses.size, 16), np.uint8)
    raw[:, 10:12] = 0xFF
    raw[:, 12:] = addresses.astype(">u4").view(np.uint8).reshape(-1, 4)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), addresses.size, [None, pa.py_buffer(raw.tobytes())]
    )


CONVERSATIONS = False
"""``--mix conversations``: every TCP flow has ACK (no probe-shaped TCP flows)."""


def ingest_mix(rng: np.random.Generator, n: int) -> pa.Table:
    """The detection columns of ``ingest_bench``'s v5 flows: TCP or UDP, random TCP flags
    (an eighth of the flows SYN-only, probe-shaped), 65 536 x 65 536 hosts, five ports."""
    packets = rng.integers(1, 100, n).astype(np.uint64)
    return pa.table(
        {
            "exporter": mapped(np.full(n, 0xC0000201, np.uint64)),
            "sampling_rate": pa.array(np.ones(n, np.uint32)),
            "bytes": pa.array(packets * rng.integers(40, 1500, n).astype(np.uint64)),
            "packets": pa.array(packets),
            "flows": pa.array(np.ones(n, np.uint64)),
            "src_addr": mapped(0x0A000000 + rng.integers(0, 65536, n).astype(np.uint64)),
            "dst_addr": mapped(0xC0A80000 + rng.integers(0, 65536, n).astype(np.uint64)),
            "src_port": pa.array(rng.integers(1024, 65535, n).astype(np.uint16)),
            "dst_port": pa.array(rng.choice([22, 53, 80, 443, 8080], n).astype(np.uint16)),
            "protocol": pa.array(rng.choice([6, 17], n).astype(np.uint8)),
            "tcp_flags": pa.array(
                (rng.integers(0, 64, n) | (0x10 if CONVERSATIONS else 0)).astype(np.uint8)
            ),
        }
    )


def in_process(args: argparse.Namespace) -> None:
    """Detection's own CPU per flow, in one process (no collector, no other process's
    noise): a minute of segments as the collector writes them (2 workers flushing every
    second at ``--rate``), read back as the engine reads them, then detected."""
    from lanalyze.alarms.config import AlarmsConfig
    from lanalyze.alarms.detect import COLUMNS, Detector
    from lanalyze.flows.store.writer import _INTEGER_ENCODING, DATA_PAGE_BYTES

    per_segment = int(args.rate * 1e6 / 2)
    segments = 120
    print(
        f"== detection CPU per flow in one process: {segments} segments of {per_segment} "
        "flows (one minute: a whole scan window), ingest_bench's flow mix"
    )
    rng = np.random.default_rng(11)
    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    try:
        paths = []
        for index in range(segments):
            path = work / f"{index}.parquet"
            table = ingest_mix(rng, per_segment)
            pq.write_table(
                table,
                path,
                compression="lz4",
                use_dictionary=False,
                column_encoding={k: v for k, v in _INTEGER_ENCODING.items() if k in COLUMNS},
                data_page_size=DATA_PAGE_BYTES,
                write_statistics=False,
            )
            paths.append(path)
        detector = Detector(AlarmsConfig())
        now = int(time.time() * 1000)
        read = detect = 0.0
        for index, path in enumerate(paths):
            started = time.process_time()
            table = pq.read_table(path, columns=list(COLUMNS), memory_map=True, use_threads=False)
            middle = time.process_time()
            detector.process(now + 500 * index, table)
            read += middle - started
            detect += time.process_time() - middle
        flows = segments * per_segment
        print(
            f"  read back {read / flows * 1e6:.3f} us/flow, detect {detect / flows * 1e6:.3f} "
            f"us/flow, together {(read + detect) / flows * 1e6:.3f} us/flow; state "
            f"{detector.nbytes / 2**20:.1f} MiB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def split(args: argparse.Namespace) -> None:
    """Detection as it runs now, in one process by CPU time: two workers' reducers
    (``alarms/partial.py``) over a minute of the ingest bench's flow mix in decode-sized
    batches (50 ms of ``--rate`` each), a report a second each (pickled and unpickled: the
    pipe), merged by the parent's detector; against the parent's detector reading the same
    flows back from segments (the way before)."""
    import pickle

    from lanalyze.alarms.config import AlarmsConfig
    from lanalyze.alarms.detect import COLUMNS, Detector
    from lanalyze.alarms.partial import Reducer

    per_worker = args.rate * 1e6 / 2
    per_batch = int(per_worker * 0.05)
    seconds = 60
    print(
        f"== detection split: 2 workers x {seconds} s at {args.rate} M flows/s, batches of "
        f"{per_batch}, a report a second each"
    )
    rng = np.random.default_rng(11)
    config = AlarmsConfig()
    workers = [Reducer(config, 2), Reducer(config, 2)]
    parent = Detector(config)
    old = Detector(config)
    now = int(time.time() * 1000)
    reduce = pipe = merge = detect_old = 0.0
    flows = 0
    kept = 0
    for second in range(seconds):
        for reducer in workers:
            batches = [ingest_mix(rng, per_batch) for _ in range(20)]
            started = time.process_time()
            for batch in batches:
                for record_batch in batch.to_batches():
                    reducer.add(now + second * 1000, record_batch)
            partial = reducer.take(now + second * 1000)
            middle = time.process_time()
            assert partial is not None
            partial = pickle.loads(pickle.dumps(partial, protocol=5))
            piped = time.process_time()
            parent.merge(now + second * 1000, partial)
            done = time.process_time()
            old.process(now + second * 1000, pa.concat_tables(batches).select(list(COLUMNS)))
            reduce += middle - started
            pipe += piped - middle
            merge += done - piped
            detect_old += time.process_time() - done
            flows += partial.flows
            kept += partial.rows.num_rows
    print(
        f"  workers {reduce / flows * 1e6:.3f} us/flow, pipe {pipe / flows * 1e6:.3f}, "
        f"parent {merge / flows * 1e6:.3f}; together {(reduce + pipe + merge) / flows * 1e6:.3f}"
        f" us/flow (the old detector on the same flows, read-back excluded: "
        f"{detect_old / flows * 1e6:.3f}); {kept / flows:.1%} of the flows sent to the parent"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.25, help="M flows/s for the CPU runs")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lossless", action="store_true", help="also the highest lossless rate")
    parser.add_argument("--rates", default="0.25,0.5,0.75,1,1.25,1.5,2")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--only", choices=["ingest", "latency", "memory", "detector", "split"])
    parser.add_argument(
        "--mix",
        choices=["ingest", "conversations"],
        default="ingest",
        help="split/detector: the ingest bench's flags, or every TCP flow with ACK",
    )
    args = parser.parse_args()
    global CONVERSATIONS  # noqa: PLW0603 - a switch of the generator for this run
    CONVERSATIONS = args.mix == "conversations"
    if args.only in (None, "split"):
        split(args)
    if args.only in (None, "detector"):
        in_process(args)
    if args.only in (None, "memory"):
        memory(args)
    if args.only in (None, "latency"):
        latency(args)
    if args.only in (None, "ingest"):
        ingest_cost(args)


if __name__ == "__main__":
    main()
