"""The ClickHouse store against two real clickhouse-server shards (tests/clickhouse.py).

Schema from the catalogue (created where missing, refused where different), columnar inserts
through the Distributed table, the rollup views' sums, the spool and its exactly-once replay,
retention by partition drops, and the export of an embedded store.
"""

from __future__ import annotations

import io
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lanalyze.flows.catalogue import COLUMNS
from lanalyze.flows.config import FlowsConfig, StoreConfig
from lanalyze.flows.errors import SchemaMismatch
from lanalyze.flows.store.clickhouse import schema
from lanalyze.flows.store.clickhouse.columns import native_strings
from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer
from lanalyze.flows.store.clickhouse.spool import Spool
from lanalyze.flows.store.clickhouse.writer import ClickHouseWriter, text_values
from lanalyze.flows.store.layout import ROLLUP_TABLES
from lanalyze.flows.store.synthetic import random_flows, to_table, write_flows
from tests.clickhouse import PASSWORD, USER, ClickHouseCluster
from tests.conftest import free_port, lanalyze_cmd

NOW = 1_760_000_000_000
DAY = 86_400_000
HOUR = 3_600_000


def store_config(cluster: ClickHouseCluster, database: str, **extra: object) -> StoreConfig:
    return StoreConfig(
        backend="clickhouse",
        servers=[f"{host}:{port}" for host, port in cluster.hosts],
        cluster=cluster.cluster,
        database=database,
        user=USER,
        password=PASSWORD,
        retry_interval=0.01,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def store(clickhouse_cluster: ClickHouseCluster, clickhouse_db: str) -> StoreConfig:
    """A store config on a fresh database whose tables exist on both shards."""
    config = store_config(clickhouse_cluster, clickhouse_db)
    assert ClickHouseMaintainer(config, FlowsConfig().rollup).ensure()
    return config


@pytest.fixture
def writer(store: StoreConfig, tmp_path: Path) -> Iterator[ClickHouseWriter]:
    writer = ClickHouseWriter(store, "t0", Spool(tmp_path / "spool", 1 << 30))
    yield writer
    writer.close()


def fill(store: StoreConfig, now_ms: int | None = None) -> int:
    """One pass of the collector's maintainer: the hour and day rollups from the minutes."""
    filled = ClickHouseMaintainer(store, FlowsConfig().rollup).fill(now_ms)
    assert filled is not None
    return filled


def count(cluster: ClickHouseCluster, sql: str) -> int:
    return int(cluster.execute(0, sql)[0][0])


def flows_table(rows: int, seed: int = 1, start: int = NOW) -> pa.Table:
    return to_table(random_flows(rows, start, start + 120_000, seed=seed, sampling=(1, 10)))


def scaled_bytes(table: pa.Table) -> int:
    rate = table.column("sampling_rate").to_numpy().astype(np.uint64)
    return int((table.column("bytes").to_numpy() * rate).sum())


# -- schema -----------------------------------------------------------------------------------


def test_schema_is_generated_from_the_catalogue() -> None:
    tables = {t.name: t for t in schema.tables("db", "c")}
    raw = tables[schema.RAW_LOCAL]
    assert [name for name, _ in raw.columns] == [c.name for c in COLUMNS] + ["batch_id"]
    assert dict(raw.columns)["src_addr"] == "FixedString(16)"
    assert dict(raw.columns)["extra"] == "Nullable(String)"
    # The enrichment names are rollup sort keys, which 18.16 refuses nullable: '' is unknown.
    assert dict(raw.columns)["src_country"] == "String"
    for table in tables.values():
        if table.kind == "local" and table.name != schema.RAW_LOCAL:
            assert "Nullable" not in " ".join(kind for _, kind in table.columns), table.name
    for resolution in schema.RESOLUTIONS:
        for rollup in ROLLUP_TABLES:
            name = schema.rollup_name(resolution, rollup.name)
            assert [n for n, _ in tables[f"{name}_local"].columns] == [
                "time",
                *rollup.columns,
                "bytes",
                "packets",
                "flows",
            ]
            assert tables[name].engine == "Distributed"
            # views feed the minutes only; the maintainer fills hours and days (issue 17)
            assert (f"{name}_mv" in tables) == (resolution == "1m")
            assert (f"{name}_fill" in tables) == (resolution != "1m")
    assert sum(table.kind == "view" for table in tables.values()) == len(ROLLUP_TABLES) + 1
    # 18.16 has no TTL: only where the server says it has
    assert "TTL" not in schema.ddl("db", "c")
    newer = schema.tables("db", "c", schema.features("23.8.2.7"), schema.Retention(raw=7))
    assert "TTL" in newer[0].create


def test_schema_command_prints_the_ddl(tmp_path: Path) -> None:
    out = subprocess.run(
        [*lanalyze_cmd(), "flows", "schema", "--backend", "clickhouse"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert "CREATE TABLE lanalyze.flows_local" in out
    assert "ENGINE = Distributed(lanalyze, lanalyze, flows_local, batch_id)" in out


def test_missing_tables_are_created_and_a_different_one_refused(
    clickhouse_cluster: ClickHouseCluster, clickhouse_db: str
) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    config = store_config(ch, db)
    # shard 1 already has a raw table, with another type for one column
    columns = ", ".join(
        f"{name} {'UInt32' if name == 'bytes' else kind}" for name, kind in schema.raw_columns()
    )
    ch.execute(1, f"CREATE TABLE {db}.flows_local ({columns}) ENGINE = MergeTree ORDER BY tuple()")
    maintainer = ClickHouseMaintainer(config, FlowsConfig().rollup)
    with pytest.raises(
        SchemaMismatch, match=r"flows_local: column bytes is UInt32, expected UInt64"
    ):
        maintainer.ensure()
    # shard 0 was completed before shard 1 was found different
    expected = len(schema.tables(db, ch.cluster))
    assert count(ch, f"SELECT count() FROM system.tables WHERE database = '{db}'") == expected
    ch.execute(1, f"DROP TABLE {db}.flows_local")
    assert ClickHouseMaintainer(config, FlowsConfig().rollup).ensure()
    assert ClickHouseMaintainer(config, FlowsConfig().rollup).ensure()  # nothing to do twice


# -- inserts and rollups ------------------------------------------------------------------------


def test_batches_spread_over_shards_and_rollups_sum_them(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, writer: ClickHouseWriter
) -> None:
    ch, db = clickhouse_cluster, store.database
    tables = [flows_table(1500, seed) for seed in range(16)]
    for table in tables:
        writer.write(table)
    assert writer.stats.inserts == 16 and writer.stats.rows == 24_000 and not writer.stats.errors
    assert count(ch, f"SELECT count() FROM {db}.flows") == 24_000
    per_shard = [int(ch.execute(i, f"SELECT count() FROM {db}.flows_local")[0][0]) for i in (0, 1)]
    # every shard's server is configured: straight into the shards, in turn
    assert writer.shard_servers() == store.servers
    assert per_shard == [12_000, 12_000]
    expected_bytes = sum(scaled_bytes(t) for t in tables)
    fill(store)
    for resolution in schema.RESOLUTIONS:
        for rollup in ROLLUP_TABLES:
            name = schema.rollup_name(resolution, rollup.name)
            got = ch.execute(0, f"SELECT sum(bytes), sum(flows) FROM {db}.{name}")[0]
            assert got == (expected_bytes, 24_000), name
    # addresses arrive as the 16 bytes they are in Parquet
    first = tables[0].slice(0, 1)
    row = ch.execute(
        0,
        f"SELECT hex(src_addr), hex(exporter) FROM {db}.flows WHERE batch_id != 0"
        " AND time_received = %(t)s AND src_port = %(p)s AND dst_port = %(d)s LIMIT 1",
        {
            "t": first.column("time_received")[0].as_py(),
            "p": first.column("src_port")[0].as_py(),
            "d": first.column("dst_port")[0].as_py(),
        },
    )
    assert row[0][0] == first.column("src_addr")[0].as_py().hex().upper()


def test_without_every_shard_configured_inserts_go_through_the_distributed_table(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, tmp_path: Path
) -> None:
    ch, db = clickhouse_cluster, store.database
    one = store.model_copy(update={"servers": store.servers[:1]})
    writer = ClickHouseWriter(one, "t9", Spool(tmp_path / "spool", 1 << 30))
    try:
        for seed in range(16):
            writer.write(flows_table(100, seed))
        assert writer.shard_servers() == []
    finally:
        writer.close()
    per_shard = [int(ch.execute(i, f"SELECT count() FROM {db}.flows_local")[0][0]) for i in (0, 1)]
    # random batch ids pick the shard: all 16 on one shard is a 2^-15 chance
    assert sum(per_shard) == 1600 and all(per_shard), per_shard


def test_shards_are_matched_to_configured_servers() -> None:
    from lanalyze.flows.store.clickhouse.writer import _shard_servers

    rows = [(1, b"ch1", b"10.0.0.1", 9000), (2, b"ch2", b"10.0.0.2", 9000)]
    assert _shard_servers(rows, ["ch1:9000", "10.0.0.2"]) == ["ch1:9000", "10.0.0.2"]
    assert _shard_servers(rows, ["ch1:9000"]) == []  # shard 2 not configured
    assert _shard_servers(rows, ["ch1:9440", "ch2:9440"]) == []  # another port (TLS)
    replicated = [*rows, (2, b"ch3", b"10.0.0.3", 9000)]
    assert _shard_servers(replicated, ["ch1", "ch2", "ch3"]) == []


def test_text_values_are_names_with_empty_for_unknown() -> None:
    chunked = pa.chunked_array([["NL", None, "Zürich"], [None, "NL"]], pa.string())
    values = text_values(chunked)
    assert values.dtype.kind == "S"
    assert values.tolist() == [b"NL", b"", "Zürich".encode(), b"", b"NL"]
    assert text_values(pa.nulls(3, pa.string())).tolist() == [b"", b"", b""]
    assert text_values(pa.array(["x", None]).dictionary_encode()).tolist() == [b"x", b""]
    assert text_values(pa.chunked_array([], pa.string())).tolist() == []


def test_native_strings_are_the_drivers_encoding() -> None:
    """The numpy encoding of a String column is byte for byte the driver's own."""
    from clickhouse_driver.varint import write_varint

    values = [b"", b"a", b"x" * 127, b"y" * 128, b"z" * 300, "é".encode(), b"", b"z" * 16384]
    array = np.array(values, dtype=f"S{max(map(len, values))}")
    expected = io.BytesIO()
    for value in values:
        write_varint(len(value), expected)
        expected.write(value)
    assert native_strings(array) == expected.getvalue()
    assert native_strings(np.zeros(4, dtype="S1")) == bytes(4)
    assert native_strings(np.zeros(0, dtype="S3")) == b""


def test_enriched_flows_are_stored_and_rolled_up_with_unknown_names_empty(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, writer: ClickHouseWriter
) -> None:
    """The collector's batches carry the enricher's names, null where unknown: stored as ''
    in the raw table and in the ``src_geo`` rollups (a sort key), every flow once."""
    ch, db = clickhouse_cluster, store.database
    columns = random_flows(3000, NOW, NOW + 120_000, seed=3)
    choices = np.array(["NL", "DE", None], dtype=object)
    columns["src_country"] = choices[np.arange(3000) % 3]
    columns["src_net_name"] = np.array(["office", None], dtype=object)[np.arange(3000) % 2]
    writer.write(to_table(columns))
    assert writer.stats.rows == 3000 and not writer.stats.errors
    by_country = dict(
        ch.execute(0, f"SELECT src_country, count() FROM {db}.flows GROUP BY src_country")
    )
    assert by_country == {"NL": 1000, "DE": 1000, "": 1000}
    assert count(ch, f"SELECT count() FROM {db}.flows WHERE src_net_name = 'office'") == 1500
    fill(store)
    for resolution in schema.RESOLUTIONS:
        name = schema.rollup_name(resolution, "src_geo")
        rolled = dict(
            ch.execute(0, f"SELECT src_country, sum(flows) FROM {db}.{name} GROUP BY src_country")
        )
        assert rolled == by_country, name


def test_hours_and_days_are_filled_from_minutes_and_read_only_where_filled(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, writer: ClickHouseWriter
) -> None:
    """Views feed the minute rollups only; the maintainer recomputes hours and days from them
    (idempotent), and the planner takes an hour or day from them only once a pass covered it:
    before, and after late flows, it reads the minutes."""
    from lanalyze.flows.exporters import CLICKHOUSE_METRICS
    from lanalyze.flows.query.clickhouse import ClickHouseBackend

    ch, db = clickhouse_cluster, store.database
    hour = NOW - NOW % HOUR
    needs = frozenset(("protocol",))
    backend = ClickHouseBackend(store)

    def next_second() -> None:
        # A pass trusts the inserts of earlier seconds than its clock less insert_timeout
        # (1 ms here, in place of insert_timeout; the servers' clocks count whole seconds):
        # let one begin.
        time.sleep(1.05 - time.time() % 1)

    def sums() -> tuple[int, ...]:
        return tuple(
            count(ch, f"SELECT sum(flows) FROM {db}.rollup_{res}_proto")
            for res in ("1m", "1h", "1d")
        )

    def sources(since: int, until: int) -> list[tuple[str, list[tuple[int, int]]]]:
        pieces = backend.plan(Path(), since, until, needs).pieces
        return [(piece.source, piece.intervals) for piece in pieces]

    try:
        writer.write(flows_table(2000, 1, hour + 60_000))
        assert sums() == (2000, 0, 0)
        # nothing filled yet: the minutes answer whole hours and days
        assert sources(hour, hour + 2 * HOUR) == [("1m", [(hour, hour + 2 * HOUR)])]
        # the flows are of 2025: minutes and hours kept for ever here, so late ones are filled
        forever = FlowsConfig().rollup.model_copy(update={"minute_max_age": 0, "hour_max_age": 0})
        maintainer = ClickHouseMaintainer(store, forever)
        next_second()
        # its hours (6 of them a partition) and its week, on the shard the batch went to
        assert maintainer.fill(settle_ms=1) == 2
        assert sums() == (2000, 2000, 2000)
        assert sources(hour, hour + 2 * HOUR) == [("1h", [(hour, hour + 2 * HOUR)])]
        assert maintainer.fill(settle_ms=1) == 0  # nothing new

        # Late flows (a replayed spool) into that hour: the hour is stale until the next pass.
        writer.write(flows_table(500, 2, hour + 120_000))
        assert sums() == (2500, 2000, 2000)
        assert sources(hour, hour + 2 * HOUR) == [
            ("1h", [(hour + HOUR, hour + 2 * HOUR)]),
            ("1m", [(hour, hour + HOUR)]),
        ]
        next_second()
        assert maintainer.fill(settle_ms=1) == 2
        assert sums() == (2500, 2500, 2500)
        assert sources(hour, hour + 2 * HOUR) == [("1h", [(hour, hour + 2 * HOUR)])]

        # Done again from scratch (the marks lost): the same sums, nothing doubled.
        for shard in range(len(ch.servers)):
            ch.execute(shard, f"TRUNCATE TABLE {db}.{schema.FILLED_LOCAL}")
        holding = sum(
            bool(int(ch.execute(i, f"SELECT count() FROM {db}.flows_local")[0][0]))
            for i in range(len(ch.servers))
        )
        assert maintainer.fill(settle_ms=1) == 2 * holding
        assert sums() == (2500, 2500, 2500)

        # Flows for a day whose minutes are past minute_max_age: not recomputed from what
        # is left of them, counted.
        assert maintainer.counters()["rollup_partitions_filled"] == 4 + 2 * holding
        writer.write(flows_table(100, 3, hour + 180_000))
        next_second()
        by_default = ClickHouseMaintainer(store, FlowsConfig().rollup)  # minutes: 2 days
        assert by_default.fill(settle_ms=1) == 0
        assert by_default.late_skipped == 2  # its hours and its week, on its shard
        assert sums() == (2600, 2500, 2500)
        assert set(by_default.counters()) <= set(CLICKHOUSE_METRICS)
    finally:
        backend.close()


def test_views_of_hours_and_days_from_earlier_versions_are_dropped(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, writer: ClickHouseWriter
) -> None:
    """They would count every flow again beside the maintainer's recomputation."""
    ch, db = clickhouse_cluster, store.database
    for shard in range(len(ch.servers)):
        ch.execute(
            shard,
            f"CREATE MATERIALIZED VIEW {db}.rollup_1h_proto_mv TO {db}.rollup_1h_proto_local"
            f" AS SELECT * FROM {db}.rollup_1m_proto_local",
        )
    assert ClickHouseMaintainer(store, FlowsConfig().rollup).ensure()
    views = f"SELECT count() FROM system.tables WHERE database = '{db}' AND name LIKE '%_mv'"
    assert count(ch, views) == len(ROLLUP_TABLES) + 1
    writer.write(flows_table(1000, 1))
    fill(store)
    assert count(ch, f"SELECT sum(flows) FROM {db}.rollup_1h_proto") == 1000


# -- spool and replay ---------------------------------------------------------------------------


def test_unreachable_clickhouse_spools_then_replays_every_batch_once(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, tmp_path: Path
) -> None:
    ch, db = clickhouse_cluster, store.database
    dead = store.model_copy(update={"servers": [f"127.0.0.1:{free_port()}"]})
    spool = Spool(tmp_path / "spool", 1 << 30)
    writer = ClickHouseWriter(dead, "t1", spool)
    tables = [flows_table(1000, seed) for seed in range(5)]
    for table in tables:
        writer.write(table)
    assert writer.stats.inserts == 0 and writer.stats.spooled == 5
    assert writer.stats.spool_segments == 5 and writer.stats.spool_bytes > 0
    assert writer.stats.errors >= 1
    writer.close()

    # A batch whose insert reached the server although the client saw a failure: spooled,
    # and already stored. The replay must find it and not insert it again.
    entry = spool.oldest()
    assert entry is not None
    stored_already = spool.read(entry)
    assert stored_already is not None
    alive = ClickHouseWriter(store, "t1", Spool(tmp_path / "spool", 1 << 30))
    assert alive.insert_once(stored_already, entry.batch_id) == "inserted"

    # The next start takes the spool up and replays it (the writer thread's idle call)
    alive.remove_stale_temporaries()
    assert alive.stats.spool_segments == 5
    alive.idle()
    assert alive.stats.spool_segments == 0 and alive.stats.spool_bytes == 0
    assert alive.stats.duplicates == 1 and alive.stats.replayed == 4
    assert count(ch, f"SELECT count() FROM {db}.flows") == 5000
    assert count(ch, f"SELECT count(DISTINCT batch_id) FROM {db}.flows") == 5
    fill(store)
    assert count(ch, f"SELECT sum(flows) FROM {db}.rollup_1h_proto") == 5000
    assert not list((tmp_path / "spool").iterdir())
    alive.close()


def test_full_spool_drops_new_batches_and_counts_them(store: StoreConfig, tmp_path: Path) -> None:
    dead = store.model_copy(update={"servers": [f"127.0.0.1:{free_port()}"]})
    one = flows_table(500)
    probe = Spool(tmp_path / "probe", 1 << 30)
    assert probe.put(one, 1)
    size = probe.bytes
    writer = ClickHouseWriter(dead, "t2", Spool(tmp_path / "spool", size * 2 + size // 2))
    kept = []
    for seed in range(4):
        kept += writer.write(flows_table(500, seed))
    assert writer.stats.spool_segments == 2
    assert writer.stats.spool_dropped_batches == 2 and writer.stats.spool_dropped_rows == 1000
    # the oldest two are the ones kept
    names = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert [int(n.split("-")[1].split(".")[0], 16) for n in names] == kept[:2]
    writer.close()


def test_errors_never_log_the_password(
    store: StoreConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = store.model_copy(update={"servers": [f"127.0.0.1:{free_port()}"]})
    writer = ClickHouseWriter(dead, "t3", Spool(tmp_path / "spool", 1 << 30))
    with caplog.at_level(logging.DEBUG):
        writer.write(flows_table(10))
    writer.close()
    assert "flows.clickhouse_failed" in caplog.text
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(store) and PASSWORD not in str(store.model_dump())


# -- retention ----------------------------------------------------------------------------------


def test_retention_drops_whole_partitions_past_max_age(
    clickhouse_cluster: ClickHouseCluster, store: StoreConfig, writer: ClickHouseWriter
) -> None:
    ch, db = clickhouse_cluster, store.database
    writer.write(flows_table(1000, 1, NOW - 10 * DAY))  # older than raw_max_age
    writer.write(flows_table(1000, 2, NOW - 3 * DAY))  # kept raw; past minute_max_age
    writer.write(flows_table(1000, 3, NOW))
    rollup = FlowsConfig().rollup.model_copy(
        update={"raw_max_age": 7, "minute_max_age": 2, "hour_max_age": 90, "day_max_age": 0}
    )
    maintainer = ClickHouseMaintainer(store, rollup)
    assert maintainer.fill(NOW + DAY + 2 * 3_600_000)  # every day of them ended
    assert maintainer.expire(NOW + 60_000) > 0
    assert count(ch, f"SELECT count() FROM {db}.flows") == 2000
    assert count(ch, f"SELECT sum(flows) FROM {db}.rollup_1m_proto") == 1000
    assert count(ch, f"SELECT sum(flows) FROM {db}.rollup_1h_proto") == 3000
    assert count(ch, f"SELECT sum(flows) FROM {db}.rollup_1d_proto") == 3000
    assert maintainer.expire(NOW + 60_000) == 0


# -- export -------------------------------------------------------------------------------------


def test_export_of_an_embedded_store_is_complete_and_idempotent(
    clickhouse_cluster: ClickHouseCluster, clickhouse_db: str, data_dir: Path, tmp_path: Path
) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    columns = random_flows(5000, NOW, NOW + 2 * 3_600_000, seed=7, sampling=(1, 100))
    write_flows(data_dir / "flows", columns, segment_ms=3_600_000)
    config = tmp_path / "lanalyze.toml"
    servers = ", ".join(f'"{h}:{p}"' for h, p in ch.hosts)
    config.write_text(
        f'[general]\ndata_dir = "{data_dir}"\n'
        f'[flows.store]\nservers = [{servers}]\ndatabase = "{db}"\n'
        f'user = "{USER}"\npassword = "{PASSWORD}"\n'
    )
    command = [*lanalyze_cmd(), "--config", str(config), "flows", "export", "--to", "clickhouse"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "5000 flows inserted, 0 already stored" in first.stdout
    assert count(ch, f"SELECT count() FROM {db}.flows") == 5000
    table = to_table(columns)
    assert count(ch, f"SELECT sum(bytes) FROM {db}.rollup_1h_summary") == scaled_bytes(table)
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "0 flows inserted, 5000 already stored" in again.stdout
    assert count(ch, f"SELECT count() FROM {db}.flows") == 5000
    assert PASSWORD not in first.stdout + first.stderr


def test_spool_and_insert_counters_are_on_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from lanalyze.flows.exporters import CollectorTotals, FlowMetrics

    store = {"inserts": 3, "rows": 900, "spool_bytes": 1234, "spool_segments": 2}
    store |= {"spool_dropped_rows": 500, "spooled": 4, "replayed": 1, "duplicates": 1}
    store |= {"rollup_partitions_filled": 6, "rollup_late_skipped": 1, "partitions_dropped": 2}
    totals = CollectorTotals(exporters=[], kernel_drops={}, store=store, datagrams=0, started_ms=0)
    registry = CollectorRegistry()
    registry.register(FlowMetrics(lambda: totals))
    text = generate_latest(registry).decode()
    for line in (
        "lanalyze_flow_clickhouse_inserts_total 3.0",
        "lanalyze_flow_store_rows_total 900.0",
        "lanalyze_flow_spool_bytes 1234.0",
        "lanalyze_flow_spool_segments 2.0",
        "lanalyze_flow_spool_dropped_rows_total 500.0",
        "lanalyze_flow_spool_batches_total 4.0",
        "lanalyze_flow_spool_replayed_batches_total 1.0",
        "lanalyze_flow_spool_duplicate_batches_total 1.0",
        "lanalyze_flow_clickhouse_rollup_partitions_filled_total 6.0",
        "lanalyze_flow_clickhouse_rollup_late_skipped_total 1.0",
        "lanalyze_flow_clickhouse_partitions_dropped_total 2.0",
        "lanalyze_flow_clickhouse_rollup_fill_failures_total 0.0",
    ):
        assert line in text, line


def test_store_settings_are_validated() -> None:
    from pydantic import ValidationError

    from lanalyze.flows.config import parse_server

    assert parse_server("ch1.example.net") == ("ch1.example.net", 9000)
    assert parse_server("[2001:db8::1]:9440") == ("2001:db8::1", 9440)
    for bad in ({"database": "x; DROP TABLE y"}, {"cluster": "1abc"}, {"servers": ["h:99999"]}):
        with pytest.raises(ValidationError):
            StoreConfig(**bad)  # type: ignore[arg-type]
    assert StoreConfig().backend == "parquet"


def test_spools_of_workers_gone_are_adopted(tmp_path: Path) -> None:
    from lanalyze.flows.store.clickhouse.spool import adopt_orphans

    root = tmp_path / "spool"
    mine, orphan = Spool(root / "worker-0", 1 << 30), Spool(root / "worker-2", 1 << 30)
    assert mine.put(flows_table(10, 1), 11) and orphan.put(flows_table(10, 2), 22)
    assert orphan.put(flows_table(10, 3), 33)
    assert adopt_orphans(root, workers=2) == 2
    assert not (root / "worker-2").exists()
    adopted = Spool(root / "worker-0", 1 << 30)
    adopted.load()
    ids = []
    while (entry := adopted.oldest()) is not None:
        ids.append(entry.batch_id)
        adopted.remove(entry)
    assert ids == [11, 22, 33]
