"""The flows of a query test in a ClickHouse cluster: the store's own schema
(:func:`lanalyze.flows.store.clickhouse.schema.ensure` on every shard), and the same flows
inserted through the Distributed table as into the embedded store, spread over the shards
by batch id as the collector's batches are.
"""

from __future__ import annotations

import time

import numpy as np

from lanalyze.flows import catalogue
from lanalyze.flows.config import RollupConfig, StoreConfig
from lanalyze.flows.store import synthetic
from lanalyze.flows.store.clickhouse import columns as column_writers
from lanalyze.flows.store.clickhouse import schema
from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer
from lanalyze.flows.store.clickhouse.writer import numpy_columns
from tests.clickhouse import ClickHouseCluster


def store_config(cluster: ClickHouseCluster, database: str) -> StoreConfig:
    return StoreConfig(
        backend="clickhouse",
        servers=[f"{host}:{port}" for host, port in cluster.hosts],
        cluster=cluster.cluster,
        database=database,
    )


def create(cluster: ClickHouseCluster, database: str) -> None:
    for shard, (host, port) in enumerate(cluster.hosts):
        client = cluster.client(shard)
        try:
            schema.ensure(client, f"{host}:{port}", database, cluster.cluster)
        finally:
            client.disconnect()


def insert(
    cluster: ClickHouseCluster, database: str, columns: dict[str, np.ndarray], batches: int = 8
) -> None:
    """The flows (``synthetic.random_flows`` columns, text ones optional) through the
    Distributed table, converted as the collector's writer converts them; then the hour and
    day rollups filled, as the collector's maintainer fills them."""
    arrays = numpy_columns(synthetic.to_table(columns), 0)
    rows = len(columns["time_received"])
    arrays[-1] = (np.arange(rows) % batches).astype(np.uint64)
    names = [column.name for column in catalogue.COLUMNS] + [schema.BATCH_COLUMN]
    column_writers.install()
    with cluster.client(0, settings={"use_numpy": True, "strings_as_bytes": True}) as client:
        client.execute(
            f"INSERT INTO {database}.{schema.RAW} ({', '.join(names)}) VALUES",
            arrays,
            columnar=True,
            settings={"insert_distributed_sync": 1},
        )
    fill(cluster, database)


def fill(cluster: ClickHouseCluster, database: str) -> None:
    """One maintainer pass, as it runs once the inserts are older than ``insert_timeout``: by
    a clock an hour ahead (the servers run on this host), so that it trusts them now."""
    upkeep = ClickHouseMaintainer(store_config(cluster, database), RollupConfig(minute_max_age=0))
    assert upkeep.fill(int(time.time() * 1000) + 3_600_000) is not None
