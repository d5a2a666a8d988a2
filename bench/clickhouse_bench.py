"""ClickHouse insert speed: rows/s one collector inserts into the two-shard cluster.

    .venv/bin/python bench/clickhouse_bench.py [--flows 2M] [--batch 500k] [--writers 1,2]

Starts two Debian ``clickhouse-server`` shards on loopback (``tests/clickhouse.py``, the test
fixture's cluster), creates the schema of ``lanalyze flows schema --backend clickhouse`` and
inserts seeded random flows (65,536 sources and destinations, half sampled 1:10) through the
collector's own writer (:class:`lanalyze.flows.store.clickhouse.writer.ClickHouseWriter`:
numpy columns, native protocol, ``insert_distributed_sync=1``), in batches of
``flows.segment_max_rows`` as a worker flushes them. ``--writers N`` runs N writers at once,
one process each, as a collector's N workers do. Two schemas:

* ``full``: the raw tables, the 12 minute-rollup views and the ``rollup_touched`` view the
  collector creates: what a deployment runs; after the inserts, one pass of the
  collector's maintainer fills the hour and day rollups from the minutes (timed apart:
  ``fill``; a collector runs it every ``flows.rollup.interval``, recomputing only the days
  whose hours got flows);
* ``raw``: the raw tables only: the client's and the Distributed insert's own cost.

Printed per run: wall seconds, rows/s, the writers' CPU µs per row (client side only), the
load average. The target is the collector's lossless receive rate on this machine (NetFlow
v5, docs/performance.md "Flow ingest": 4.0 M flows/s median); both shards run on the same
2 cores as the client here, so the server side's cost is in the figures too.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from lanalyze.flows.config import RollupConfig, StoreConfig  # noqa: E402
from lanalyze.flows.store.clickhouse import schema  # noqa: E402
from lanalyze.flows.store.clickhouse.connect import client  # noqa: E402
from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer  # noqa: E402
from lanalyze.flows.store.clickhouse.spool import Spool  # noqa: E402
from lanalyze.flows.store.clickhouse.writer import ClickHouseWriter  # noqa: E402
from lanalyze.flows.store.synthetic import random_flows, to_table  # noqa: E402

RECEIVE_RATE = 4.0e6  # lanalyze, v5, lossless flows/s (docs/performance.md, Flow ingest)
T0 = 1_760_000_000_000


def _count(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
    text = text.strip().lower()
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(float(text))


def create(config: StoreConfig, kind: str) -> None:
    for server in config.servers:
        connection = client(config, server)
        connection.execute(f"DROP DATABASE IF EXISTS {config.database}")
        connection.execute(f"CREATE DATABASE {config.database}")
        for table in schema.tables(config.database, config.cluster):
            if kind == "full" or table.name in (schema.RAW, schema.RAW_LOCAL):
                connection.execute(table.create)
        connection.disconnect()


def disk_bytes(cluster: Any, database: str) -> tuple[int, int]:
    """Bytes on disk of the raw tables and of every table, both shards (active parts)."""
    raw = total = 0
    for shard in range(len(cluster.servers)):
        for table, size in cluster.execute(
            shard,
            "SELECT table, sum(bytes_on_disk) FROM system.parts"
            " WHERE database = %(db)s AND active GROUP BY table",
            {"db": database},
        ):
            total += int(size)
            raw += int(size) if table == schema.RAW_LOCAL else 0
    return raw, total


def writer_process(
    config: StoreConfig,
    flows: int,
    batch: int,
    seed: int,
    spool: str,
    out: Any,
    ready: Any,
    go: Any,
) -> None:
    table = to_table(
        random_flows(
            batch, T0, T0 + 60_000, seed=seed, sources=65536, destinations=65536, sampling=(1, 10)
        )
    )
    writer = ClickHouseWriter(config, f"b{seed}", Spool(Path(spool), 1 << 34))
    ready.put("ready")
    go.wait()
    started = time.process_time()
    for _ in range(max(1, flows // batch)):
        writer.write(table)
    cpu = time.process_time() - started
    writer.close()
    if writer.stats.errors or writer.stats.spooled:
        raise SystemExit(f"writer {seed}: {writer.stats}")
    out.put((cpu, writer.stats.rows))


def server_cpu(cluster: Any) -> float:
    """CPU seconds (user + system) the shards' processes have used so far: a figure the
    other work on a shared machine does not inflate, as it does the wall-clock rate."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for server in cluster.servers:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run(
    config: StoreConfig, flows: int, batch: int, writers: int, spool: Path
) -> tuple[float, float]:
    """(rows/s, client CPU µs per row) of ``writers`` processes inserting ``flows`` rows."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    ready = context.Queue()
    go = context.Event()
    procs = [
        context.Process(
            target=writer_process,
            args=(config, flows // writers, batch, seed, str(spool / f"w{seed}"), out, ready, go),
        )
        for seed in range(writers)
    ]
    for proc in procs:
        proc.start()
    # The clock starts when every writer has its batch ready (generating it is not inserting).
    for _ in procs:
        assert ready.get() == "ready"
    started = time.perf_counter()
    go.set()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a writer failed ({proc.exitcode})")
    cpu = sum(r[0] for r in results)
    rows = sum(r[1] for r in results)
    return rows / wall, cpu / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", default="2M")
    parser.add_argument("--batch", default="500k")
    parser.add_argument("--writers", default="1,2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--schemas", default="raw,full")
    args = parser.parse_args()
    flows, batch = _count(args.flows), _count(args.batch)
    from tests.clickhouse import start_cluster

    root = Path(tempfile.mkdtemp(prefix="lanalyze-chbench-"))
    cluster = start_cluster(root / "cluster")
    try:
        config = StoreConfig(
            backend="clickhouse",
            servers=[f"{h}:{p}" for h, p in cluster.hosts],
            database="bench",
            insert_timeout=600,
        )
        print(
            f"clickhouse {cluster.execute(0, 'SELECT version()')[0][0]}, 2 shards; "
            f"{flows:,} flows in batches of {batch:,}"
        )
        for kind in args.schemas.split(","):
            for writers in (int(w) for w in args.writers.split(",")):
                rates, cpus = [], []
                for number in range(args.runs):
                    create(config, kind)
                    spool = root / "spool"
                    shutil.rmtree(spool, ignore_errors=True)
                    before = server_cpu(cluster)
                    rate, cpu = run(config, flows, batch, writers, spool)
                    inserted = server_cpu(cluster)
                    fill = f" servers {(inserted - before) / flows * 1e6:.1f} µs CPU/row,"
                    if kind == "full" and hasattr(ClickHouseMaintainer, "fill"):
                        # the flows are of 2025: an hour ahead of now every hour has ended
                        upkeep = ClickHouseMaintainer(config, RollupConfig(minute_max_age=0))
                        started = time.perf_counter()
                        assert upkeep.fill(int(time.time() * 1000) + 3_600_000)
                        seconds = time.perf_counter() - started
                        filling = (server_cpu(cluster) - inserted) / flows * 1e6
                        fill += f" fill {seconds:.2f} s, servers {filling:.1f} µs CPU/row,"
                    rates.append(rate)
                    cpus.append(cpu)
                    load = os.getloadavg()[0]
                    raw_bytes, all_bytes = disk_bytes(cluster, config.database)
                    print(
                        f"  {kind:4} writers={writers} run {number + 1}: {rate / 1e6:.3f} M rows/s,"
                        f" client {cpu:.2f} µs CPU/row,{fill} load {load:.1f};"
                        f" on disk {raw_bytes / flows:.1f} bytes/flow raw,"
                        f" {all_bytes / flows:.1f} with rollups"
                    )
                median = statistics.median(rates)
                print(
                    f"RESULT {kind} writers={writers}: {median / 1e6:.3f} M rows/s median "
                    f"({median / RECEIVE_RATE:.2f}x the 4.0 M flows/s lossless receive rate), "
                    f"client {statistics.median(cpus):.2f} µs CPU/row"
                )
    finally:
        for server in cluster.servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
