"""Flow report speed: top-10 source addresses by bytes, lanalyze vs nfdump, same flows.

    .venv/bin/python bench/query_bench.py --flows 10M [--work DIR] [--runs 7]
    .venv/bin/python bench/query_bench.py --console-30d [--work DIR]

Part 1 (``--flows``): N flows (65,536 distinct sources, 10 k flows/s of receive time) are
generated once with numpy; the same records are sent as NetFlow v5 (30 a datagram) to nfcapd
(paced so its 4 MiB socket buffer never overflows; the stored count is checked) and stored as
lanalyze raw segments, which the rollup maintainer then rolls up (its rate is printed). Then
``nfdump -R DIR -s srcip/bytes -n 10`` and lanalyze's top-10 by srcip run alternately, each
several times; medians are printed with the ratio, and the two top-10 lists are compared.
lanalyze is timed three ways: the report call in a warm process (the API and console path,
from the rollups), the same from raw flows only, and the ``lanalyze flows top`` command
including interpreter start-up.

Part 2 (``--console-30d``): rollup parts as 30 days at 10 k flows/s leave them (29 closed
days and the closed weeks among them, today's hours, the last two hours per minute; 65,536
sources and destinations a day),
written directly; then every top-N and series report of the console over ``-30d`` is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lanalyze.flows import catalogue  # noqa: E402
from lanalyze.flows.config import QueryConfig, RollupConfig  # noqa: E402
from lanalyze.flows.decode.v5 import HEADER as V5_HEADER  # noqa: E402
from lanalyze.flows.query import reports  # noqa: E402
from lanalyze.flows.store.layout import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    ROLLUP_TABLES,
    Manifest,
    bucket_key,
    write_manifest,
)
from lanalyze.flows.store.paths import part_path  # noqa: E402
from lanalyze.flows.store.rollup import RollupMaintainer  # noqa: E402
from lanalyze.flows.store.synthetic import to_table, v4_addresses  # noqa: E402
from lanalyze.flows.store.writer import SegmentWriter  # noqa: E402

RATE = 10_000  # flows per second of receive time
CHUNK = 1_000_000
SOURCES = 65_536

V5_RECORD = np.dtype(
    [
        ("src", ">u4"),
        ("dst", ">u4"),
        ("nexthop", ">u4"),
        ("input", ">u2"),
        ("output", ">u2"),
        ("packets", ">u4"),
        ("octets", ">u4"),
        ("first", ">u4"),
        ("last", ">u4"),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("pad1", "u1"),
        ("flags", "u1"),
        ("proto", "u1"),
        ("tos", "u1"),
        ("src_as", ">u2"),
        ("dst_as", ">u2"),
        ("src_mask", "u1"),
        ("dst_mask", "u1"),
        ("pad2", ">u2"),
    ]
)
V5_DATAGRAM = np.dtype([("header", V5_HEADER), ("records", V5_RECORD, (30,))])


def parse_count(text: str) -> int:
    scale = {"k": 10**3, "M": 10**6, "G": 10**9}.get(text[-1], 1)
    return int(float(text.rstrip("kMG")) * scale)


def chunk_columns(index: int, rows: int, start_ms: int) -> dict[str, np.ndarray]:
    """Flows [index, index + rows): deterministic per chunk."""
    rng = np.random.default_rng(index)
    batch = catalogue.empty_batch(rows)
    seq = np.arange(index, index + rows, dtype=np.uint64)
    batch["time_received"][:] = np.uint64(start_ms) + seq * np.uint64(1000) // np.uint64(RATE)
    batch["time_start"][:] = batch["time_received"] - np.uint64(1000)
    batch["time_end"][:] = batch["time_received"]
    src = np.uint32(0x0A000000) + rng.integers(0, SOURCES, rows).astype(np.uint32)
    dst = np.uint32(0xC6120000) + rng.integers(0, SOURCES, rows).astype(np.uint32)
    batch["exporter"][:] = v4_addresses(np.full(rows, 0x7F000001, dtype=np.uint32))
    batch["src_addr"][:] = v4_addresses(src)
    batch["dst_addr"][:] = v4_addresses(dst)
    batch["src_port"][:] = rng.integers(1024, 65535, rows).astype(np.uint16)
    batch["dst_port"][:] = rng.choice(np.array([443, 80, 53, 22, 25, 8080], np.uint16), rows)
    batch["protocol"][:] = rng.choice(np.array([6, 17], np.uint8), rows)
    batch["packets"][:] = rng.integers(1, 200, rows).astype(np.uint64)
    batch["bytes"][:] = batch["packets"] * rng.integers(40, 1500, rows).astype(np.uint64)
    batch["in_if"][:] = rng.integers(1, 9, rows).astype(np.uint32)
    batch["out_if"][:] = rng.integers(1, 9, rows).astype(np.uint32)
    batch["ip_version"][:] = 4
    batch["_src_u32"] = src  # type: ignore[assignment]
    batch["_dst_u32"] = dst  # type: ignore[assignment]
    return batch


def v5_datagrams(columns: dict[str, np.ndarray], sequence: int) -> np.ndarray:
    rows = len(columns["bytes"])
    count = rows // 30
    grams = np.zeros(count, V5_DATAGRAM)
    now = int(time.time())
    grams["header"]["version"] = 5
    grams["header"]["count"] = 30
    grams["header"]["uptime"] = 3_600_000
    grams["header"]["secs"] = now
    grams["header"]["sequence"] = sequence + np.arange(count, dtype=np.uint64) * 30
    records = grams["records"].reshape(-1)
    used = count * 30
    records["src"] = columns["_src_u32"][:used]
    records["dst"] = columns["_dst_u32"][:used]
    records["input"] = columns["in_if"][:used]
    records["output"] = columns["out_if"][:used]
    records["packets"] = columns["packets"][:used]
    records["octets"] = columns["bytes"][:used]
    records["first"] = 3_500_000
    records["last"] = 3_590_000
    records["sport"] = columns["src_port"][:used]
    records["dport"] = columns["dst_port"][:used]
    records["proto"] = columns["protocol"][:used]
    grams["records"] = records.reshape(count, 30)
    return grams


def udp_queue_bytes(port: int) -> int:
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    return 0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build(work: Path, flows: int) -> None:
    """Store the same flows for nfcapd (over UDP) and for lanalyze (raw segments)."""
    flows -= flows % 30
    lan, nf = work / "lanalyze", work / "nfcapd"
    shutil.rmtree(work, ignore_errors=True)
    lan.mkdir(parents=True)
    nf.mkdir(parents=True)
    start_ms = int(time.time() * 1000) - flows * 1000 // RATE - 2 * HOUR_MS
    start_ms -= start_ms % HOUR_MS
    port = free_udp_port()
    log = open(work / "nfcapd.log", "w")  # noqa: SIM115
    peer = subprocess.Popen(
        [
            *("nfcapd", "-w", str(nf), "-p", str(port), "-b", "127.0.0.1"),
            *("-y", "-t", "3600", "-B", str(4 * 2**20)),
        ],
        stdout=log,
        stderr=log,
    )
    time.sleep(1.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    began = time.perf_counter()
    # The collector's own writer: the stored flows are what a collector would have stored.
    store = SegmentWriter(lan / "flows", "bench", compression="lz4")
    for index in range(0, flows, CHUNK):
        rows = min(CHUNK, flows - index)
        columns = chunk_columns(index, rows, start_ms)
        grams = v5_datagrams(columns, index)
        data = memoryview(grams.tobytes())
        size = V5_DATAGRAM.itemsize
        for burst in range(0, len(grams), 200):
            for number in range(burst, min(burst + 200, len(grams))):
                sock.sendto(data[number * size : (number + 1) * size], ("127.0.0.1", port))
            while udp_queue_bytes(port) > 500_000:
                time.sleep(0.0005)
        del columns["_src_u32"], columns["_dst_u32"]
        store.write(to_table(columns))  # one segment per hour, as the collector writes
        print(f"  {index + rows:,} flows generated", end="\r", flush=True)
    while udp_queue_bytes(port) > 0:
        time.sleep(0.05)
    time.sleep(0.5)
    peer.send_signal(signal.SIGTERM)
    peer.wait(timeout=600)
    print(f"\nbuilt both stores in {time.perf_counter() - began:.0f} s")
    stored = nfdump_flow_count(nf)
    print(f"nfcapd stored {stored:,} of {flows:,} flows")
    maintainer = RollupMaintainer(RollupConfig(compression="lz4"), lan / "flows")
    began = time.perf_counter()
    maintainer.run_once()
    maintainer.release()
    spent = time.perf_counter() - began
    print(f"rollup maintainer: {flows:,} flows in {spent:.1f} s = {flows / spent:,.0f} flows/s")
    (work / "meta.json").write_text(
        json.dumps({"flows": flows, "start_ms": start_ms, "nfcapd_flows": stored})
    )


def nfdump_flow_count(directory: Path) -> int:
    out = subprocess.run(
        ["nfdump", "-R", str(directory), "-I"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("Flows:"):
            return int(line.split(":")[1])
    return 0


def nfdump_top(directory: Path) -> tuple[float, list[tuple[str, int]]]:
    began = time.perf_counter()
    out = subprocess.run(
        ["nfdump", "-R", str(directory), "-s", "srcip/bytes", "-n", "10", "-o", "csv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spent = time.perf_counter() - began
    rows = [line.split(",") for line in out.split("\n\n")[0].splitlines()[1:]]
    return spent, [(row[4], int(row[9])) for row in rows]


def lanalyze_top(flow_dir: Path, since: int, until: int, raw: bool) -> tuple[float, list]:
    began = time.perf_counter()
    report = reports.top(flow_dir, "srcip", since=since, until=until, limit=10, use_rollups=not raw)
    spent = time.perf_counter() - began
    return spent, [(row.values["srcip"], row.bytes) for row in report.rows], report.plan


def cli_top(flow_dir: Path, since: int, until: int) -> float:
    exe = ROOT / ".venv" / "bin" / "lanalyze"
    began = time.perf_counter()
    subprocess.run(
        [
            str(exe),
            *("flows", "top", "--by", "srcip", "-n", "10", "--format", "json"),
            *("--since", str(since // 1000), "--until", str(until // 1000)),
            *("--data", str(flow_dir)),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - began


def compare(work: Path, runs: int) -> None:
    meta = json.loads((work / "meta.json").read_text())
    flow_dir = work / "lanalyze" / "flows"
    since = meta["start_ms"]
    until = since + meta["flows"] * 1000 // RATE + HOUR_MS
    until += HOUR_MS - until % HOUR_MS
    reports.apply_config(QueryConfig(threads=2))
    lanalyze_top(flow_dir, since, until, raw=False)  # warm: imports, first connection
    times: dict[str, list[float]] = {"nfdump": [], "warm": [], "raw": [], "cli": []}
    plan = ""
    for _ in range(runs):
        spent, nf_rows = nfdump_top(work / "nfcapd")
        times["nfdump"].append(spent)
        spent, our_rows, plan = lanalyze_top(flow_dir, since, until, raw=False)
        times["warm"].append(spent)
        spent, raw_rows, _ = lanalyze_top(flow_dir, since, until, raw=True)
        times["raw"].append(spent)
        times["cli"].append(cli_top(flow_dir, since, until))
    same = [(str(a), int(b)) for a, b in nf_rows] == [(a, int(b)) for a, b in our_rows]
    same_raw = raw_rows == our_rows
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{meta['flows']:,} flows ({meta['nfcapd_flows']:,} stored by nfcapd), {runs} runs")
    print(f"top-10 equal to nfdump's: {same}; rollup == raw: {same_raw}; plan: {plan}")
    for name, label in (
        ("warm", "lanalyze report call, rollups (API/console)"),
        ("raw", "lanalyze report call, raw flows only"),
        ("cli", "lanalyze flows top (process start incl.)"),
    ):
        print(
            f"nfdump {median['nfdump']:.3f} s | {label}: {median[name]:.3f} s | "
            f"ratio ours/nfdump {median[name] / median['nfdump']:.3f}"
        )


# --- part 2: 30 days of rollups --------------------------------------------------------------

CARDINALITY = {
    "iface": 1024,
    "proto": 4,
    "app": 2000,
    "dst_port": 20_000,
    "src_port": 20_000,
    "summary": 50_000,
    "src_addr": 65_536,
    "dst_addr": 65_536,
    "src_addr_proto": 65_536,
    "dst_addr_proto": 65_536,
}


def rollup_rows(
    table: str,
    columns: tuple[str, ...],
    times: np.ndarray,
    rng: np.random.Generator,
    flows_per_bucket: int,
) -> pa.Table:
    keys = CARDINALITY[table]
    count = len(times) * keys
    data: dict[str, np.ndarray] = {"time": np.repeat(times, keys).astype(np.uint64)}
    index = np.tile(np.arange(keys, dtype=np.uint32), len(times))
    for column in columns:
        if column in ("src_addr", "dst_addr", "exporter"):
            base = 0x0A000000 if column == "src_addr" else 0xC6120000
            values = v4_addresses(np.uint32(base) + (index % np.uint32(keys)))
            data[column] = values
        elif column == "protocol":
            data[column] = np.array([6, 17, 1, 58], np.uint8)[index % 4]
        elif column in ("dst_port", "src_port", "service_port"):
            data[column] = (index % 65535).astype(np.uint16)
        elif column in ("in_if", "out_if"):
            data[column] = (index % 32).astype(np.uint32)
        elif column in ("tos", "tcp_flags", "ip_version"):
            data[column] = (index % 4).astype(np.uint8)
        else:
            data[column] = (index % 1000).astype(np.uint32)
    per_key = max(1, flows_per_bucket // keys)
    flows = rng.integers(1, 2 * per_key + 1, count).astype(np.uint64)
    packets = flows * rng.integers(1, 50, count).astype(np.uint64)
    data["bytes"] = packets * rng.integers(60, 1400, count).astype(np.uint64)
    data["packets"] = packets
    data["flows"] = flows
    arrays = []
    for values in data.values():
        if values.dtype.kind == "S":
            raw = np.ascontiguousarray(values).view(np.uint8)
            arrays.append(
                pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(16), len(values), [None, pa.py_buffer(raw)]
                ).cast(pa.binary())
            )
        else:
            arrays.append(pa.array(values))
    return pa.Table.from_arrays(arrays, names=list(data))


def build_30d(work: Path) -> int:
    flow_dir = work / "console30d" / "flows"
    shutil.rmtree(flow_dir.parent, ignore_errors=True)
    now = int(time.time() * 1000)
    today = now - now % DAY_MS
    current_hour = now - now % HOUR_MS
    manifest = Manifest()
    rng = np.random.default_rng(30)
    began = time.perf_counter()

    def put(
        resolution: str,
        table: str,
        columns: tuple[str, ...],
        times: list[int],
        per: int,
        stem: str = "",
    ) -> None:
        rows = rollup_rows(table, columns, np.array(times, dtype=np.uint64), rng, per)
        key = bucket_key(resolution, times[0])
        name = f"{stem or 'bench-' + str(times[0])}.parquet"
        path = part_path(flow_dir, resolution, table, key, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, path, compression="lz4", row_group_size=1_000_000)
        manifest.parts.setdefault(resolution, {}).setdefault(table, {}).setdefault(key, []).append(
            name
        )

    week_ms = 7 * DAY_MS
    for table in ROLLUP_TABLES:
        for day in range(29, 0, -1):
            start = today - day * DAY_MS
            put("1d", table.name, table.columns, [start], RATE * 86_400)
        # Closed weeks (epoch-aligned, as the maintainer builds them from the days).
        week = today - 29 * DAY_MS
        week += -week % week_ms
        while week + week_ms <= today:
            put("1w", table.name, table.columns, [week], RATE * 7 * 86_400, f"w{week}-0")
            week += week_ms
        # Hours of today and of the first, partial day of the window (a real store has the
        # middle days' hours too, but no 30-day report reads them: whole days come from 1d).
        first_day = today - 30 * DAY_MS
        for hour in [
            *range(first_day, first_day + DAY_MS, HOUR_MS),
            *range(today, current_hour + 1, HOUR_MS),
        ]:
            put("1h", table.name, table.columns, [hour], RATE * 3600)
        for block in range(first_day, current_hour - 6 * HOUR_MS + 1, 6 * HOUR_MS):
            if first_day + DAY_MS <= block < today:
                continue  # middle days: their 1d parts answer
            put("6h", table.name, table.columns, [block], RATE * 6 * 3600, f"b{block}-0")
        for hour in (current_hour - HOUR_MS, current_hour):
            minutes = list(range(hour, min(hour + HOUR_MS, now), MINUTE_MS))
            put("1m", table.name, table.columns, minutes, RATE * 60)
    # Everything older than the last two hours at minute resolution has expired.
    manifest.expired_before = {"1m": current_hour - HOUR_MS, "raw": current_hour - HOUR_MS}
    for hour in range(today - 30 * DAY_MS, current_hour + 1, HOUR_MS):
        manifest.latest[time.strftime("%Y%m%d%H", time.gmtime(hour / 1000))] = min(
            hour + HOUR_MS - 1, now - 1000
        )
    write_manifest(flow_dir, manifest)
    size = sum(p.stat().st_size for p in flow_dir.rglob("*.parquet"))
    print(f"30-day rollups written in {time.perf_counter() - began:.0f} s, {size / 2**20:.0f} MiB")
    return now


def console_30d(work: Path, runs: int) -> None:
    now = build_30d(work)
    flow_dir = work / "console30d" / "flows"
    since, until = now - 30 * DAY_MS, now
    reports.apply_config(QueryConfig(threads=2))
    cases = [
        ("top srcip", lambda: reports.top(flow_dir, "srcip", since=since, until=until)),
        ("top dstip", lambda: reports.top(flow_dir, "dstip", since=since, until=until)),
        ("top ip", lambda: reports.top(flow_dir, "ip", since=since, until=until)),
        ("top app", lambda: reports.top(flow_dir, "app", since=since, until=until)),
        ("top proto", lambda: reports.top(flow_dir, "proto", since=since, until=until)),
        ("top dstport", lambda: reports.top(flow_dir, "proto,dstport", since=since, until=until)),
        ("top srcnet/24", lambda: reports.top(flow_dir, "srcnet/24", since=since, until=until)),
        ("top interfaces", lambda: reports.top_interfaces(flow_dir, since=since, until=until)),
        ("series total", lambda: reports.series(flow_dir, since=since, until=until)),
        ("series by app", lambda: reports.series(flow_dir, since=since, until=until, by="app")),
        ("series by srcip", lambda: reports.series(flow_dir, since=since, until=until, by="srcip")),
    ]
    print(f"30-day console reports (-30d .. now), median of {runs}:")
    worst = 0.0
    for label, call in cases:
        call()
        spent = []
        for _ in range(runs):
            began = time.perf_counter()
            result = call()
            spent.append(time.perf_counter() - began)
        median = statistics.median(spent)
        worst = max(worst, median)
        plan = getattr(result, "plan", "")
        print(f"  {label:16s} {median:.3f} s  {plan}")
    print(f"slowest 30-day report: {worst:.3f} s (target < 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", help="stored flows, e.g. 10M or 100M")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lanalyze-query-bench"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="reuse the stores of a previous run")
    parser.add_argument("--console-30d", action="store_true")
    args = parser.parse_args()
    if shutil.which("nfdump") is None and args.flows:
        sys.exit("nfdump is not installed")
    if args.flows:
        work = args.work / args.flows
        if not (args.reuse and (work / "meta.json").exists()):
            build(work, parse_count(args.flows))
        compare(work, args.runs)
    if args.console_30d:
        console_30d(args.work, args.runs)
    os._exit(0)


if __name__ == "__main__":
    main()
