"""Lossless flow ingest rate: lanalyze vs nfcapd, same paced sender, same receive buffer.

For each format (NetFlow v5 with 30 records a datagram, IPFIX with 25) and each collector,
the paced sender offers rising rates for a few seconds each; a rate is lossless when fewer
than 0.1 % of the sent flows are missing from the store (stored = rows in the Parquet
segments for lanalyze, nfcapd's own flow count of the files it wrote) and the kernel's drop
counter of the port says the same. The highest lossless rate of each run is kept; the
median of the runs is printed for both collectors, with the ratio, and the stored bytes per
flow.

    .venv/bin/python bench/ingest_bench.py --runs 3

The sender is Python: pre-built datagrams, ``sendto`` in a tight loop paced every
millisecond, spread over several processes and source sockets (several "exporters", so the
kernel spreads them over lanalyze's SO_REUSEPORT workers). On loopback the sender also pays
the kernel's receive path, so on a small machine the sender competes with the collectors for
the cores: the figures are a floor, and the machine is shared (noisy).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
RECEIVE_BUFFER = 64 * 2**20
LOSS_LIMIT = 0.001


# -- datagrams ---------------------------------------------------------------------------------


def v5_datagrams(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    now = int(time.time())
    for index in range(count):
        header = struct.pack(">HHIIIIBBH", 5, 30, 3_600_000, now, 0, index * 30, 0, 0, 0)
        rec = np.zeros(
            30,
            dtype=[
                ("src", ">u4"),
                ("dst", ">u4"),
                ("nh", ">u4"),
                ("inp", ">u2"),
                ("out", ">u2"),
                ("pkts", ">u4"),
                ("bytes", ">u4"),
                ("first", ">u4"),
                ("last", ">u4"),
                ("sport", ">u2"),
                ("dport", ">u2"),
                ("pad", "u1"),
                ("flags", "u1"),
                ("proto", "u1"),
                ("tos", "u1"),
                ("sas", ">u2"),
                ("das", ">u2"),
                ("smask", "u1"),
                ("dmask", "u1"),
                ("pad2", ">u2"),
            ],
        )
        rec["src"] = 0x0A000000 + rng.integers(0, 65536, 30)
        rec["dst"] = 0xC0A80000 + rng.integers(0, 65536, 30)
        rec["inp"] = rng.integers(1, 8, 30)
        rec["out"] = rng.integers(1, 8, 30)
        rec["pkts"] = rng.integers(1, 100, 30)
        rec["bytes"] = rec["pkts"] * rng.integers(40, 1500, 30)
        rec["first"] = 3_600_000 - rng.integers(1000, 60_000, 30)
        rec["last"] = 3_600_000 - rng.integers(0, 1000, 30)
        rec["sport"] = rng.integers(1024, 65535, 30)
        rec["dport"] = rng.choice([22, 53, 80, 443, 8080], 30)
        rec["flags"] = rng.integers(0, 64, 30)
        rec["proto"] = rng.choice([6, 17], 30)
        out.append(header + rec.tobytes())
    return out


IPFIX_FIELDS = (
    (8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (5, 1),
    (10, 4), (14, 4), (1, 8), (2, 8), (152, 8), (153, 8),
)  # fmt: skip
IPFIX_RECORDS = 25


def ipfix_template() -> bytes:
    fields = b"".join(struct.pack(">HH", e, n) for e, n in IPFIX_FIELDS)
    record = struct.pack(">HH", 256, len(IPFIX_FIELDS)) + fields
    body = struct.pack(">HH", 2, 4 + len(record)) + record
    return struct.pack(">HHIII", 10, 16 + len(body), int(time.time()), 0, 1) + body


def ipfix_datagrams(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    n = IPFIX_RECORDS
    now_ms = int(time.time() * 1000)
    dtype = [
        ("src", ">u4"),
        ("dst", ">u4"),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("proto", "u1"),
        ("flags", "u1"),
        ("tos", "u1"),
        ("inp", ">u4"),
        ("out", ">u4"),
        ("bytes", ">u8"),
        ("pkts", ">u8"),
        ("start", ">u8"),
        ("end", ">u8"),
    ]
    out = []
    for index in range(count):
        rec = np.zeros(n, dtype=dtype)
        rec["src"] = 0x0A000000 + rng.integers(0, 65536, n)
        rec["dst"] = 0xC0A80000 + rng.integers(0, 65536, n)
        rec["sport"] = rng.integers(1024, 65535, n)
        rec["dport"] = rng.choice([22, 53, 80, 443, 8080], n)
        rec["proto"] = rng.choice([6, 17], n)
        rec["flags"] = rng.integers(0, 64, n)
        rec["inp"] = rng.integers(1, 8, n)
        rec["out"] = rng.integers(1, 8, n)
        rec["pkts"] = rng.integers(1, 100, n)
        rec["bytes"] = rec["pkts"] * rng.integers(40, 1500, n)
        rec["start"] = now_ms - rng.integers(1000, 60_000, n)
        rec["end"] = now_ms - rng.integers(0, 1000, n)
        data = rec.tobytes()
        body = struct.pack(">HH", 256, 4 + len(data)) + data
        header = struct.pack(">HHIII", 10, 16 + len(body), now_ms // 1000, index * n, 1)
        out.append(header + body)
    return out


# -- the paced sender --------------------------------------------------------------------------


def sender(
    fmt: str, port: int, rate: float, duration: float, sockets: int, seed: int, start_at: float
) -> tuple[int, float]:
    """Send ``rate`` flows/s for ``duration`` s; returns (flows sent, seconds it took)."""
    per_datagram = 30 if fmt == "v5" else IPFIX_RECORDS
    # Enough distinct datagrams that the stores cannot win by spotting repeats.
    datagrams = v5_datagrams(2048, seed) if fmt == "v5" else ipfix_datagrams(2048, seed)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    target = ("127.0.0.1", port)
    if fmt == "ipfix":
        template = ipfix_template()
        for sock in socks:
            sock.sendto(template, target)
    while time.time() < start_at:
        time.sleep(0.001)
    per_second = rate / per_datagram
    total = int(per_second * duration)
    sent = 0
    count = len(datagrams)
    nsocks = len(socks)
    sends = [sock.sendto for sock in socks]
    started = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * per_second) + 1)
        while sent < due:
            try:
                sends[sent % nsocks](datagrams[sent % count], target)
            except BlockingIOError:
                continue
            sent += 1
        if sent >= due:
            pause = (sent / per_second) - (time.perf_counter() - started)
            if pause > 0.0005:
                time.sleep(min(pause, 0.001))
    return sent * per_datagram, time.perf_counter() - started


def _sender_entry(args: tuple[str, int, float, float, int, int, float], out: object) -> None:
    flows, seconds = sender(*args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((flows, seconds, usage.ru_utime + usage.ru_stime))  # type: ignore[attr-defined]


def send_paced(
    fmt: str, port: int, rate: float, duration: float, senders: int
) -> tuple[int, float, float]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 0.5 + (0.5 if fmt == "ipfix" else 0)
    procs = [
        context.Process(
            target=_sender_entry,
            args=((fmt, port, rate / senders, duration, 4, i, start_at), results),
        )
        for i in range(senders)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=duration * 10 + 60) for _ in procs]
    for proc in procs:
        proc.join()
    flows = sum(o[0] for o in outcomes)
    seconds = max(o[1] for o in outcomes)
    return flows, seconds, sum(o[2] for o in outcomes)


def children_cpu() -> float:
    """User + system CPU of every waited-for child (and theirs: lanalyze's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- kernel counters ---------------------------------------------------------------------------


def port_sockets(port: int) -> list[list[str]]:
    rows = []
    for name in ("udp", "udp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[-1], 16) == port:
                rows.append(fields)
    return rows


def port_drops(port: int) -> int:
    return sum(int(fields[12]) for fields in port_sockets(port))


def port_drained(port: int) -> bool:
    return all(int(fields[4].split(":")[1], 16) == 0 for fields in port_sockets(port))


def wait_drained(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not port_drained(port):
        time.sleep(0.1)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- collectors --------------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: int
    stored: int
    kernel_drops: int
    stored_bytes: int
    send_seconds: float
    cpu_seconds: float
    """CPU the collector used (all its processes, user + system), the senders' excluded."""

    @property
    def loss(self) -> float:
        return 1 - self.stored / self.sent if self.sent else 1.0


def run_nfcapd(fmt: str, rate: float, duration: float, senders: int) -> Outcome:
    nfcapd = shutil.which("nfcapd") or "/usr/bin/nfcapd"
    work = Path(tempfile.mkdtemp(prefix="bench-nfcapd-"))
    port = free_udp_port()
    log_path = work / "nfcapd.log"
    cpu0 = children_cpu()
    try:
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [
                    *(nfcapd, "-w", str(work), "-p", str(port), "-b", "127.0.0.1", "-y"),
                    *("-B", str(RECEIVE_BUFFER), "-t", "3600", "-P", str(work / "pid")),
                ],
                stdout=log_file,
                stderr=log_file,
            )
            deadline = time.monotonic() + 20
            while "Startup" not in log_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            sent, seconds, sender_cpu = send_paced(fmt, port, rate, duration, senders)
            wait_drained(port)
            time.sleep(0.5)
            drops = port_drops(port)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        text = log_path.read_text()
        stored = sum(int(n) for n in re.findall(r"Ident: .*? Flows: (\d+)", text))
        size = sum(p.stat().st_size for p in work.glob("nfcapd.2*"))
        return Outcome(sent, stored, drops, size, seconds, children_cpu() - cpu0 - sender_cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_lanalyze(
    fmt: str,
    rate: float,
    duration: float,
    senders: int,
    workers: int,
    compression: str,
    enrich: str = "",
) -> Outcome:
    """``enrich``: TOML of ``[flows.enrich]``/``[flows.networks]`` (issue 16's cost)."""
    work = Path(tempfile.mkdtemp(prefix="bench-lanalyze-"))
    port = free_udp_port()
    config = work / "lanalyze.toml"
    config.write_text(
        f'[general]\ndata_dir = "{work / "data"}"\nlog_level = "warning"\n'
        f'[flows]\nlisten = ["127.0.0.1:{port}"]\nreceive_buffer = {RECEIVE_BUFFER}\n'
        f"workers = {workers}\n"
        + (f'compression = "{compression}"\n' if compression else "")
        + enrich
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
            # Listening = every worker's socket bound on the port.
            deadline = time.monotonic() + 60
            while len(port_sockets(port)) < max(1, workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # workers import numpy/pyarrow after the parent bound the sockets
            sent, seconds, sender_cpu = send_paced(fmt, port, rate, duration, senders)
            wait_drained(port)
            drops = port_drops(port)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        files = list((work / "data" / "flows" / "raw").glob("*/*.parquet"))
        stored = sum(pq.read_metadata(f).num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
        return Outcome(sent, stored, drops, size, seconds, children_cpu() - cpu0 - sender_cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def highest_lossless(
    name: str, fmt: str, rates: list[float], run: object
) -> tuple[float, float, float]:
    """The highest rate stored with < 0.1 % loss (the rate the sender achieved, which on a
    busy machine can be below the offered one), that run's stored bytes per flow, and the
    collector's CPU time per stored flow (its idle cost, start-up included, measured first
    and subtracted): CPU time is far less sensitive to other load than the loss point."""
    idle: Outcome = run(30.0)  # type: ignore[operator]
    best, best_bpf, best_cpu = 0.0, float("nan"), float("nan")
    first: tuple[float, float] | None = None
    short = 0
    for rate in rates:
        outcome: Outcome = run(rate)  # type: ignore[operator]
        achieved = outcome.sent / outcome.send_seconds
        ok = outcome.loss < LOSS_LIMIT and outcome.kernel_drops <= outcome.sent * LOSS_LIMIT
        cpu = (outcome.cpu_seconds - idle.cpu_seconds) / max(1, outcome.stored)
        print(
            f"  {name:8} {fmt:5} offered {rate / 1e6:5.2f} M/s achieved {achieved / 1e6:5.2f} "
            f"sent {outcome.sent} stored {outcome.stored} loss {outcome.loss:7.3%} "
            f"kernel drops {outcome.kernel_drops} "
            f"bytes/flow {outcome.stored_bytes / max(1, outcome.stored):5.1f} "
            f"CPU {cpu * 1e6:5.2f} us/flow {'ok' if ok else 'LOSS'}",
            flush=True,
        )
        if first is None:
            first = (outcome.stored_bytes / max(1, outcome.stored), cpu)
        if not ok:
            break
        if achieved > best:
            best, best_bpf, best_cpu = (
                achieved,
                outcome.stored_bytes / max(1, outcome.stored),
                cpu,
            )
        short = short + 1 if achieved < rate * 0.95 else 0
        if short >= 2:
            print("  (the sender cannot offer more on this machine now: stopping here)")
            break
    if not best and first is not None:
        # Nothing lossless: still report bytes and CPU per flow, at the lowest rate.
        print(f"  {name:8} {fmt:5} no lossless rate (bytes and CPU per flow: lowest rate's)")
        best_bpf, best_cpu = first
    return best, best_bpf, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="v5,ipfix")
    parser.add_argument(
        "--rates", default="0.25,0.5,0.75,1,1.25,1.5,2,2.5,3,3.5,4,5", help="M flows/s"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--senders", type=int, default=2, help="sender processes")
    parser.add_argument("--workers", type=int, default=0, help="lanalyze flows.workers")
    parser.add_argument("--peers", default="nfcapd,lanalyze")
    parser.add_argument("--compression", default="", help="lanalyze flows.compression")
    parser.add_argument(
        "--enrich",
        action="store_true",
        help="also lanalyze with every kind of enrichment on (issue 16; peer lanalyze+enrich, "
        "bench/enrich_data.py), in the same runs",
    )
    args = parser.parse_args()
    enrich_toml = ""
    if args.enrich:
        try:
            from bench import enrich_data
        except ModuleNotFoundError:  # run as a script: bench/ is sys.path[0]
            import enrich_data  # type: ignore[no-redef]
        enrich_toml = enrich_data.toml()
    rates = [float(r) * 1e6 for r in args.rates.split(",")]
    workers = args.workers or os.cpu_count() or 1
    print(f"cores: {os.cpu_count()}, lanalyze workers: {workers}, senders: {args.senders}, ")
    print(f"receive buffer {RECEIVE_BUFFER >> 20} MiB for both; loss limit {LOSS_LIMIT:.1%}")
    for fmt in args.formats.split(","):
        results: dict[str, list[tuple[float, float, float]]] = {"nfcapd": [], "lanalyze": []}
        runners = {
            "nfcapd": lambda r, fmt=fmt: run_nfcapd(fmt, r, args.duration, args.senders),
            "lanalyze": lambda r, fmt=fmt: run_lanalyze(
                fmt, r, args.duration, args.senders, workers, args.compression
            ),
        }
        if enrich_toml:
            results["lanalyze+enrich"] = []
            runners["lanalyze+enrich"] = lambda r, fmt=fmt: run_lanalyze(
                fmt, r, args.duration, args.senders, workers, args.compression, enrich_toml
            )
        for run in range(args.runs):
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{fmt} run {run + 1}/{args.runs} (load average {load})", flush=True)
            for name, runner in runners.items():
                if name in args.peers or (name == "lanalyze+enrich" and "lanalyze" in args.peers):
                    results[name].append(highest_lossless(name, fmt, rates, runner))
        medians = {}
        for name, rows in results.items():
            if rows:
                medians[name] = [
                    statistics.median([row[i] for row in rows if row[i] == row[i]] or [0.0])
                    for i in range(3)
                ]
        for name, (rate, bpf, cpu) in medians.items():
            print(
                f"RESULT {fmt} {name}: {rate / 1e6:.2f} M flows/s lossless, {bpf:.1f} bytes/flow, "
                f"{cpu * 1e6:.2f} us CPU/flow"
            )
        if "lanalyze" in medians and "lanalyze+enrich" in medians:
            off, on = medians["lanalyze"], medians["lanalyze+enrich"]
            print(
                f"ENRICH {fmt}: lossless rate {on[0] / off[0] if off[0] else 0:.2f}x of "
                f"enrichment off, CPU per flow {on[2] / off[2] if off[2] else 0:.2f}x"
            )
        if "nfcapd" in medians and "lanalyze" in medians:
            peer, mine = medians["nfcapd"], medians["lanalyze"]
            ratio = f"{mine[0] / peer[0]:.2f}" if peer[0] else "n/a (nfcapd lost at every rate)"
            print(
                f"RATIO {fmt} lanalyze/nfcapd: rate {ratio}, "
                f"CPU per flow {mine[2] / peer[2] if peer[2] else 0:.2f}, "
                f"bytes per flow {mine[1] / peer[1] if peer[1] else 0:.2f}"
            )


if __name__ == "__main__":
    main()
