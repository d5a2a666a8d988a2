"""Top-10 sources by bytes on a two-shard ClickHouse cluster vs the embedded store, same flows.

    .venv/bin/python bench/clickhouse_query_bench.py --flows 10M [--rate 10000] [--work DIR]
        [--runs 5] [--generator random|formula]

N flows (65,536 distinct sources, ``--rate`` flows/s of receive time, 10 k by default) are
generated once with numpy in chunks of 1 M and stored twice: as lanalyze raw segments (which
the rollup maintainer then rolls up) and through the ClickHouse store's own schema and insert
columns (``lanalyze.flows.store.clickhouse``) into two ``clickhouse-server`` instances on loopback
(Debian's 18.16, started as the tests start them: ``tests/clickhouse.py``), a batch id per
insert spreading them over the shards, the materialized views filling the minute rollups and
one pass of the collector's maintainer the hour and day ones (timed). Then
``reports.top(by="srcip", limit=10)`` over the whole window runs alternately on both backends
in this warm process, from the rollups and from raw flows only; medians are printed, and the
answers of the two backends are compared (they must be equal).

``--generator formula`` (for 100 M flows, where the client could not insert fast enough): the
flows are a pure function of their number ``n`` (:func:`formula_flows`, the same arithmetic
as :func:`formula_sql`), written to Parquet with numpy and generated inside ClickHouse by each
shard itself (``INSERT INTO flows_local SELECT ... FROM numbers(...)``, half the numbers per
shard, through the same 13 views): the same flows in both stores without the client's insert
cost. The window is whole minutes:
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

import numpy as np  # noqa: E402
from tests.clickhouse import start_cluster  # noqa: E402

from lanalyze.flows import catalogue  # noqa: E402
from lanalyze.flows.config import RollupConfig, StoreConfig  # noqa: E402
from lanalyze.flows.query import engine, reports  # noqa: E402
from lanalyze.flows.query.clickhouse import ClickHouseBackend  # noqa: E402
from lanalyze.flows.store.clickhouse import connect, schema  # noqa: E402
from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer  # noqa: E402
from lanalyze.flows.store.clickhouse.writer import new_batch_id, numpy_columns  # noqa: E402
from lanalyze.flows.store.rollup import RollupMaintainer  # noqa: E402
from lanalyze.flows.store.synthetic import (  # noqa: E402
    random_flows,
    to_table,
    v4_addresses,
    write_flows,
)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000
RATE = 10_000  # flows per second of receive time
CHUNK = 1_000_000


MUL_SRC, MUL_DST, MUL_BYTES = 40_503, 9_973, 2_654_435_761


def formula_flows(first: int, rows: int, rate: int) -> dict[str, np.ndarray]:
    """Flows ``first`` .. ``first + rows - 1`` of the formula generator (65,536 sources)."""
    n = np.arange(first, first + rows, dtype=np.uint64)
    batch = catalogue.empty_batch(rows)
    received = np.uint64(T0) + n * np.uint64(1000) // np.uint64(rate)
    for name in ("time_received", "time_start", "time_end"):
        batch[name][:] = received
    batch["exporter"][:] = v4_addresses(
        (np.uint64(0xC0000201) + n % np.uint64(2)).astype(np.uint32)
    )
    source = n * np.uint64(MUL_SRC) % np.uint64(65_536)
    batch["src_addr"][:] = v4_addresses((np.uint64(0x0A000000) + source).astype(np.uint32))
    target = n * np.uint64(MUL_DST) % np.uint64(65_536)
    batch["dst_addr"][:] = v4_addresses((np.uint64(0xC6330000) + target).astype(np.uint32))
    batch["protocol"][:] = 6
    batch["ip_version"][:] = 4
    batch["dst_port"][:] = 443
    packets = np.uint64(1) + n * np.uint64(7) % np.uint64(99)
    batch["packets"][:] = packets
    batch["bytes"][:] = packets * (np.uint64(40) + n * np.uint64(MUL_BYTES) % np.uint64(1460))
    return batch


def _address_sql(value: str) -> str:
    """An IPv4 address (UInt32 expression) as the store's IPv4-mapped FixedString(16)."""
    half = "reverse(toFixedString(reinterpretAsString(toUInt64({})), 8))"
    return (
        f"toFixedString(concat('', {half.format(0)}, "
        f"{half.format(f'0xFFFF00000000 + ({value})')}), 16)"
    )


def formula_sql(database: str, first: int, rows: int, rate: int, batch_id: int) -> str:
    """The same flows as :func:`formula_flows`, made by the server into its ``flows_local``."""
    received = f"toUInt64({T0}) + intDiv(number * 1000, {rate})"
    packets = "(1 + number * 7 % 99)"
    return (
        f"INSERT INTO {database}.{schema.RAW_LOCAL} (time_received, time_start, time_end,"
        " exporter, src_addr, dst_addr, protocol, ip_version, dst_port, packets, bytes,"
        " flows, sampling_rate, batch_id)"
        f" SELECT {received}, {received}, {received},"
        f" {_address_sql('0xC0000201 + number % 2')},"
        f" {_address_sql(f'0x0A000000 + number * {MUL_SRC} % 65536')},"
        f" {_address_sql(f'0xC6330000 + number * {MUL_DST} % 65536')},"
        f" 6, 4, 443, {packets}, {packets} * (40 + number * {MUL_BYTES} % 1460), 1, 1,"
        f" {batch_id} FROM numbers({first}, {rows})"
    )


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


def generate_on_shards(
    store: StoreConfig, hosts: list[tuple[str, int]], flows: int, rate: int
) -> None:
    """Each shard makes its half of the formula's flows, 10 M per insert (blocks of ~1 M go
    through the views as the collector's inserts do), both shards at once."""
    import threading

    def shard(index: int, host: str, port: int) -> None:
        client = connect.client(store, f"{host}:{port}")
        try:
            half = -(-flows // len(hosts))
            first, last = index * half, min(flows, (index + 1) * half)
            for start in range(first, last, 10 * CHUNK):
                client.execute(
                    formula_sql(
                        store.database, start, min(10 * CHUNK, last - start), rate, new_batch_id()
                    )
                )
        finally:
            client.disconnect()

    threads = [
        threading.Thread(target=shard, args=(i, host, port)) for i, (host, port) in enumerate(hosts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", default="10M")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=RATE, help="flows per second of receive time")
    parser.add_argument("--generator", choices=("random", "formula"), default="random")
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
            if args.generator == "formula":
                columns = formula_flows(start, rows, rate)
            else:
                columns = random_flows(rows, lo, hi, seed=index + 1, sources=65_536)
            began = time.perf_counter()
            write_flows(data, columns, segment_ms=60_000, compression="lz4")
            parquet_s += time.perf_counter() - began
            if args.generator == "formula":
                continue
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
        if args.generator == "formula":
            began = time.perf_counter()
            generate_on_shards(store, cluster.hosts, flows, rate)
            clickhouse_s = time.perf_counter() - began
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
