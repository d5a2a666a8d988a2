"""The ClickHouse flow schema the query tests read, made here from the catalogue in the shape
the storage side creates (a local MergeTree per shard, a Distributed table over them, per
rollup table and resolution a SummingMergeTree fed by a materialized view), and the same
flows inserted into it as into the embedded store.

Stands in for the storage side's generated DDL and insert path (issue 17, built in parallel):
when those are merged, the query tests should create their schema and insert through them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lanalyze.flows import catalogue
from lanalyze.flows.query.clickhouse import (
    LOCAL_SUFFIX,
    RAW_TABLE,
    ROLLUP_RESOLUTIONS,
    rollup_table,
)
from lanalyze.flows.store.layout import DERIVED_SQL, RESOLUTIONS, ROLLUP_TABLES
from tests.clickhouse import ClickHouseCluster

TYPES = {
    "u8": "UInt8",
    "u16": "UInt16",
    "u32": "UInt32",
    "u64": "UInt64",
    "ip": "FixedString(16)",
    "mac": "UInt64",
    "time_ms": "UInt64",
    "str": "Nullable(String)",
}
DAY = 86_400_000


def _type(column: str) -> str:
    if column in DERIVED_SQL:
        return "UInt16"
    return TYPES[catalogue.BY_NAME[column].kind]


def each(cluster: ClickHouseCluster, sql: str) -> None:
    for shard in range(len(cluster.servers)):
        client = cluster.client(shard)
        try:
            client.execute(sql)
        finally:
            client.disconnect()


def create(cluster: ClickHouseCluster, db: str) -> None:
    """The raw and rollup tables and views on every shard (no ``ON CLUSTER`` without
    ZooKeeper)."""
    columns = ", ".join(f"{c.name} {TYPES[c.kind]}" for c in catalogue.COLUMNS)
    local = f"{db}.{RAW_TABLE}{LOCAL_SUFFIX}"
    each(
        cluster,
        f"CREATE TABLE {local} ({columns}) ENGINE = MergeTree "
        f"PARTITION BY intDiv(time_received, {DAY}) ORDER BY time_received",
    )
    each(
        cluster,
        f"CREATE TABLE {db}.{RAW_TABLE} AS {local} "
        f"ENGINE = Distributed({cluster.cluster}, {db}, {RAW_TABLE}{LOCAL_SUFFIX}, rand())",
    )
    for resolution in ROLLUP_RESOLUTIONS:
        step = RESOLUTIONS[resolution]
        for table in ROLLUP_TABLES:
            name = rollup_table(resolution, table)
            keys = ", ".join(table.columns)
            typed = ", ".join(f"{c} {_type(c)}" for c in table.columns)
            each(
                cluster,
                f"CREATE TABLE {db}.{name}{LOCAL_SUFFIX} (time UInt64, {typed}, bytes UInt64, "
                f"packets UInt64, flows UInt64) ENGINE = SummingMergeTree "
                f"PARTITION BY intDiv(time, {DAY}) ORDER BY (time, {keys})",
            )
            each(
                cluster,
                f"CREATE TABLE {db}.{name} AS {db}.{name}{LOCAL_SUFFIX} "
                f"ENGINE = Distributed({cluster.cluster}, {db}, {name}{LOCAL_SUFFIX}, rand())",
            )
            selected = ", ".join(
                f"({DERIVED_SQL[c]}) AS {c}" if c in DERIVED_SQL else c for c in table.columns
            )
            each(
                cluster,
                f"CREATE MATERIALIZED VIEW {db}.mv_{name} TO {db}.{name}{LOCAL_SUFFIX} AS "
                f"SELECT intDiv(time_received, {step}) * {step} AS time, {selected}, "
                "sum(bytes * sampling_rate) AS bytes, sum(packets * sampling_rate) AS packets, "
                f"sum(flows) AS flows FROM {local} GROUP BY time, {keys}",
            )


def insert(cluster: ClickHouseCluster, db: str, columns: dict[str, np.ndarray]) -> None:
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
            data.append([bytes(v).ljust(16, b"\0") for v in values])
        else:
            data.append(values.tolist())
    client = cluster.client(0)
    try:
        client.execute(
            f"INSERT INTO {db}.{RAW_TABLE} ({', '.join(names)}) VALUES",
            data,
            columnar=True,
            settings={"insert_distributed_sync": 1},
        )
    finally:
        client.disconnect()
