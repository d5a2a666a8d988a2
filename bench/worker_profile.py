"""CPU per flow of one collector worker, end to end, at a fixed offered rate.

One :class:`~lanalyze.flows.worker.FlowWorker` (the worker's own loop: ``recvmmsg``, decode,
Arrow, the background Parquet writer, counters, template saves) runs in this process on a
loopback socket; ``ingest_bench.py``'s paced sender offers ``--rate`` flows/s from a child
process for ``--seconds``. Printed: the worker process's CPU (user + system, all threads) per
stored flow, split into the receive/decode thread and the writer thread (and the ratio to
nfcapd's CPU per flow, measured by ``ingest_bench.py``, given with ``--peer-us``), and with
``--profile`` the receive thread's cProfile (cumulative and own time; cProfile counts wall
time, which includes waiting for the CPU on a busy machine: read it as proportions).

CPU time, not wall time: other processes on the machine move it little (they move the
lossless rate a lot). The load average is printed with each figure.

    .venv/bin/python bench/worker_profile.py --format v5 --rate 0.5 --seconds 8 --runs 3
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

try:
    from bench.ingest_bench import RECEIVE_BUFFER, sender
except ModuleNotFoundError:  # run as a script: bench/ is sys.path[0]
    from ingest_bench import RECEIVE_BUFFER, sender  # type: ignore[no-redef]
import pyarrow.parquet as pq

from lanalyze.flows import worker as worker_module
from lanalyze.flows.receive import open_udp
from lanalyze.flows.worker import FlowWorker, WorkerSpec


def _send(fmt: str, port: int, rate: float, seconds: float, start_at: float) -> None:
    sender(fmt, port, rate, seconds, 4, 1, start_at)


def run_once(fmt: str, rate: float, seconds: float, profile: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="worker-profile-") as work:
        sock = open_udp("127.0.0.1:0", "bench", receive_buffer=RECEIVE_BUFFER)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        spec = WorkerSpec(index=0, writer_id="prof", data_dir=Path(work))
        worker = FlowWorker(spec, [sock])
        context = multiprocessing.get_context("fork")
        start_at = time.time() + 1.0
        child = context.Process(target=_send, args=(fmt, port, rate, seconds, start_at))
        child.start()
        # Counted from the worker's "ready" (after its start-up: stale temporaries, templates,
        # the one full GC) to the end of its shutdown flush.
        marks: dict[str, float] = {}
        report = worker.report

        def mark_ready(kind: str = "report") -> None:
            if kind == "ready":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                marks["total"] = usage.ru_utime + usage.ru_stime
                marks["main"] = time.thread_time()
            report(kind)

        worker.report = mark_ready  # type: ignore[method-assign]
        profiler = cProfile.Profile() if profile else None

        def stop_when_sent() -> None:
            child.join()
            time.sleep(0.5)
            worker.stopping = True

        threading.Thread(target=stop_when_sent, daemon=True).start()
        if profiler is not None:
            profiler.enable()
        worker.run()
        if profiler is not None:
            profiler.disable()
        main = time.thread_time() - marks["main"]
        after = resource.getrusage(resource.RUSAGE_SELF)
        total = after.ru_utime + after.ru_stime - marks["total"]
        files = list(Path(work).glob("flows/raw/*/*.parquet"))
        stored = sum(pq.read_metadata(f).num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
        sock.close()
        if profiler is not None:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(35)
            stats.sort_stats("tottime").print_stats(25)
        per = 1e6 / max(1, stored)
        return {
            "total": total * per,
            "main": main * per,
            "writer": (total - main) * per,
            "stored": stored,
            "bytes": size / max(1, stored),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", default="v5", choices=("v5", "ipfix"))
    parser.add_argument("--rate", type=float, default=0.5, help="M flows/s offered")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the receive thread")
    parser.add_argument(
        "--gather", type=float, default=None, help="seconds a worker lets datagrams gather"
    )
    parser.add_argument(
        "--peer-us", default="0.25,0.34", help="nfcapd µs CPU/flow (v5,ipfix), from ingest_bench"
    )
    args = parser.parse_args()
    if args.gather is not None:
        worker_module.BATCH_GATHER_SECONDS = args.gather
    rows = []
    for run in range(args.runs):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        row = run_once(args.format, args.rate * 1e6, args.seconds, args.profile)
        rows.append(row)
        print(
            f"run {run + 1}: {args.format} {args.rate} M/s, stored {int(row['stored'])}, "
            f"CPU {row['total']:.3f} µs/flow (receive+decode thread {row['main']:.3f}, "
            f"others {row['writer']:.3f}), {row['bytes']:.1f} bytes/flow (load {load})",
            flush=True,
        )
    med = {k: statistics.median(r[k] for r in rows) for k in ("total", "main", "writer", "bytes")}
    print(
        f"MEDIAN {args.format}: {med['total']:.3f} µs CPU/flow (receive+decode "
        f"{med['main']:.3f}, writer and other threads {med['writer']:.3f}), "
        f"{med['bytes']:.1f} bytes/flow"
    )
    peer = dict(zip(("v5", "ipfix"), map(float, args.peer_us.split(",")), strict=True))[args.format]
    print(f"  nfcapd {peer:.2f} µs/flow (its whole process), ours/nfcapd {med['total'] / peer:.2f}")


if __name__ == "__main__":
    main()
