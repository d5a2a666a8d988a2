"""The flows of a query test in a ClickHouse cluster: the store's own schema
(:func:`lanalyze.flows.store.clickhouse.schema.ensure` on every shard), and the same flows
inserted through the Distributed table as into the embedded store, spread over the shards
by batch id as the collector's batches are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lanalyze.flows import catalogue
from lanalyze.flows.config import StoreConfig
from lanalyze.flows.store.clickhouse import schema
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
    """The flows (``synthetic.random_flows`` columns) through the Distributed table."""
    rows = len(columns["time_received"])
    data: list[Any] = []
    names = []
    for column in catalogue.COLUMNS:
        names.append(column.name)
        values = columns.get(column.name)
        if values is None:
            data.append([None] * rows)
        elif column.kind == "ip":
            # numpy's bytes drop trailing zero bytes (10.0.0.0): put them back.
            data.append([bytes(v).ljust(16, b"\0") for v in values])
        else:
            data.append(values.tolist())
    names.append(schema.BATCH_COLUMN)
    data.append([i % batches for i in range(rows)])
    client = cluster.client(0)
    try:
        client.execute(
            f"INSERT INTO {database}.{schema.RAW} ({', '.join(names)}) VALUES",
            data,
            columnar=True,
            settings={"insert_distributed_sync": 1},
        )
    finally:
        client.disconnect()
