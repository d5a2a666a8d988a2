"""The two-shard ClickHouse fixture itself: both servers answer, the cluster spans them."""

from __future__ import annotations

from tests.clickhouse import PASSWORD, USER, ClickHouseCluster


def test_two_shards_one_cluster(clickhouse_cluster: ClickHouseCluster, clickhouse_db: str) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    rows = ch.execute(
        0,
        "SELECT shard_num, port FROM system.clusters WHERE cluster = %(c)s ORDER BY shard_num",
        {"c": ch.cluster},
    )
    assert [port for _, port in rows] == [port for _, port in ch.hosts]
    ch.each(f"CREATE TABLE {db}.t (x UInt32) ENGINE = MergeTree ORDER BY x")
    ch.each(f"CREATE TABLE {db}.d (x UInt32) ENGINE = Distributed(lanalyze, {db}, t, x)")
    ch.execute(
        0,
        f"INSERT INTO {db}.d (x) VALUES",
        [(i,) for i in range(10)],
        settings={"insert_distributed_sync": 1},
    )
    assert [ch.execute(i, f"SELECT count() FROM {db}.t")[0][0] for i in range(2)] == [5, 5]
    assert ch.execute(1, f"SELECT count() FROM {db}.d") == [(10,)]
    # the password user exists, for tests of the backend's secret handling
    with ch.client(0, user=USER, password=PASSWORD) as client:
        assert client.execute("SELECT 1") == [(1,)]


def test_restart_one_shard_keeps_data(
    clickhouse_cluster: ClickHouseCluster, clickhouse_db: str
) -> None:
    ch, db = clickhouse_cluster, clickhouse_db
    ch.each(f"CREATE TABLE {db}.t (x UInt32) ENGINE = MergeTree ORDER BY x")
    ch.execute(1, f"INSERT INTO {db}.t (x) VALUES", [(1,), (2,)])
    ch.stop(1)
    assert not ch.servers[1].running
    ch.start(1)
    assert ch.execute(1, f"SELECT sum(x) FROM {db}.t") == [(3,)]
