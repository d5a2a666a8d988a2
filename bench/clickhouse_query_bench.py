"""Top-10 sources by bytes on a two-shard ClickHouse cluster vs the embedded store, same flows.

    .venv/bin/python bench/clickhouse_query_bench.py --flows 10M [--rate 10000] [--work DIR]
        [--runs 5]

N flows (65,536 distinct sources, ``--rate`` flows/s of receive time, 10 k by default) are
generated once with numpy in chunks of 1 M and stored twice: as lanalyze raw segments (which
the rollup maintainer then rolls up) and through the ClickHouse store's own schema and insert
columns (``lanalyze.flows.store.clickhouse``) into two ``clickhouse-server`` instances on loopback
(Debian's 18.16, started as the tests start them: ``tests/clickhouse.py``), a batch id per
insert spreading them over the shards, the materialized views filling the minute rollups and
one pass of the collector's maintainer the hour and day ones (timed). Then
``reports.top(by="srcip", limit=10)`` over the whole window runs alternately on both backends
in this warm process, from the rollups and from raw flows only; medians are printed, and the
answers of the two backends are compared (they must be equal). The window is whole minutes:
both backends answer it from rollups alone (the embedded store from its closed hour or day,
ClickHouse from its per-minute or coarser rollups).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.clickhouse import start_cluster  # noqa: E402

from lanalyze.flows.config import RollupConfig, StoreConfig  # noqa: E402
from lanalyze.flows.query import engine, reports  # noqa: E402
from lanalyze.flows.query.clickhouse import ClickHouseBackend  # noqa: E402
from lanalyze.flows.store.clickhouse import connect, schema  # noqa: E402
from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer  # noqa: E402
from lanalyze.flows.store.clickhouse.writer import new_batch_id, numpy_columns  # noqa: E402
from lanalyze.flows.store.rollup import RollupMaintainer  # noqa: E402
from lanalyze.flows.store.synthetic import random_flows, to_table, write_flows  # noqa: E402

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000
RATE = 10_000  # flows per second of receive time
CHUNK = 1_000_000


def count(text: str) -> int:
    text = text.strip().upper()
    factor = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * factor)


def timed(run, runs: int) -> tuple[float, object]:
    times = []
    answer = None
    for _ in range(runs):
        start = time.perf_counter()
        answer = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", default="10M")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=RATE, help="flows per second of receive time")
    args = parser.parse_args()
    flows = count(args.flows)
    work = args.work or Path(tempfile.mkdtemp(prefix="ch-query-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "flows"
    data.mkdir(exist_ok=True)
    # The window: whole minutes, so both backends answer from rollups alone (a ragged end
    # is read from raw flows by both).
    rate = args.rate
    until = T0 + -(-flows * 1000 // rate // 60_000) * 60_000
    print(f"{flows:,} flows, {(until - T0) / 60_000:.0f} min of receive time, work {work}")

    cluster = start_cluster(work / "clickhouse")
    try:
        store = StoreConfig(
            backend="clickhouse",
            servers=[f"{host}:{port}" for host, port in cluster.hosts],
            cluster=cluster.cluster,
            database="bench",
            insert_timeout=1800,  # a busy machine: 1 M rows through 13 views
        )
        for host, port in cluster.hosts:
            client = connect.client(store, f"{host}:{port}")
            schema.ensure(client, f"{host}:{port}", store.database, store.cluster)
            client.disconnect()
        inserter = connect.client(store, use_numpy=True)
        sql = (
            f"INSERT INTO {store.database}.{schema.RAW} "
            f"({', '.join([c for c, _ in schema.raw_columns()])}) VALUES"
        )
        parquet_s = clickhouse_s = 0.0
        for index, start in enumerate(range(0, flows, CHUNK)):
            rows = min(CHUNK, flows - start)
            lo = T0 + start * 1000 // rate
            hi = T0 + (start + rows) * 1000 // rate
            columns = random_flows(rows, lo, hi, seed=index + 1, sources=65_536)
            began = time.perf_counter()
            write_flows(data, columns, segment_ms=60_000, compression="lz4")
            parquet_s += time.perf_counter() - began
            table = to_table(columns)
            began = time.perf_counter()
            inserter.execute(
                sql,
                numpy_columns(table, new_batch_id()),
                columnar=True,
                settings=connect.INSERT_SETTINGS,
            )
            clickhouse_s += time.perf_counter() - began
        inserter.disconnect()
        print(
            f"stored: Parquet segments {flows / parquet_s:,.0f} flows/s; "
            f"ClickHouse (2 shards, 13 views) {flows / clickhouse_s:,.0f} flows/s"
        )
        began = time.perf_counter()
        upkeep = ClickHouseMaintainer(store, RollupConfig(minute_max_age=0, hour_max_age=0))
        # the flows are of 2023: by a clock an hour ahead every insert has settled
        assert upkeep.fill(int(time.time() * 1000) + 3_600_000) is not None
        print(f"ClickHouse hour and day rollups filled in {time.perf_counter() - began:.1f} s")
        began = time.perf_counter()
        maintainer = RollupMaintainer(RollupConfig(minute_max_age=0, raw_max_age=0), data)
        try:
            maintainer.run_once(now=(until + 2 * 86_400_000) / 1000)
        finally:
            maintainer.release()
        print(f"embedded rollups built in {time.perf_counter() - began:.1f} s")

        embedded = engine.backend()
        clickhouse = ClickHouseBackend(store)
        results: dict[str, float] = {}
        answers: dict[str, object] = {}
        for label, backend in (("embedded", embedded), ("clickhouse", clickhouse)):
            engine.use(backend)
            for rollups in (True, False):

                def run(rollups: bool = rollups) -> object:
                    return reports.top(
                        data, "srcip", since=T0, until=until, limit=10, use_rollups=rollups
                    )

                run()  # warm: imports, connections, caches
                key = f"{label} {'rollups' if rollups else 'raw'}"
                results[key], answer = timed(run, args.runs)
                answers[key] = answer.rows  # type: ignore[attr-defined]
                print(f"{key:22} {results[key] * 1000:9.1f} ms  ({answer.plan})")  # type: ignore[attr-defined]
        engine.use(embedded)
        clickhouse.close()
        same = len({repr(rows) for rows in answers.values()}) == 1
        print(f"top-10 equal on both backends, rollups and raw: {same}")
        for kind in ("rollups", "raw"):
            ratio = results[f"clickhouse {kind}"] / results[f"embedded {kind}"]
            print(f"clickhouse / embedded, {kind}: {ratio:.2f}")
        if not same:
            raise SystemExit("the backends answered differently")
    finally:
        for server in cluster.servers:
            server.stop()


if __name__ == "__main__":
    main()
