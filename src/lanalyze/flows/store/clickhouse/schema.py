"""The ClickHouse tables of the flow store, generated from the column catalogue.

Per database, on every server of the cluster (there is no ZooKeeper, so no ``ON CLUSTER``: the
same DDL runs on each server named in ``flows.store.servers``):

``flows_local``
    MergeTree, one per shard: every catalogue column (:data:`lanalyze.flows.catalogue.COLUMNS`)
    in catalogue order with the same meaning and units as in Parquet (addresses
    ``FixedString(16)``, IPv4-mapped; times ``UInt64`` UTC milliseconds: 18.16 has no
    DateTime64; the enrichment names ``String`` with ``''`` for unknown, where Parquet has
    null: :data:`TEXT_DIMENSIONS`), plus ``batch_id`` (:data:`BATCH_COLUMN`), the
    collector's id of the insert a row came in (exactly-once replay, :mod:`.writer`).
    Partitioned by UTC day (``intDiv(time_received, 86400000)``, no time zone involved),
    ordered by ``time_received``.
``flows``
    Distributed over ``flows_local`` of cluster ``flows.store.cluster``, sharded by
    ``batch_id``: a batch lands whole on one shard (one part, atomic), batches spread evenly.
``rollup_<res>_<table>_local`` / ``rollup_<res>_<table>``
    For ``res`` in 1m, 1h, 1d and every embedded rollup table
    (:data:`lanalyze.flows.store.layout.ROLLUP_TABLES`, same dimensions): a SummingMergeTree
    of ``time`` (bucket start, UInt64 ms), the dimensions, ``bytes``, ``packets`` (both
    scaled by ``sampling_rate``, as the embedded rollups) and ``flows``, and a Distributed
    table over the shards. Rows are summed at merge time, eventually: readers always
    ``sum() ... GROUP BY``.
``rollup_1m_<table>_mv``
    The only views on the raw table: each shard's minute rollups are fed as flows arrive.
    A materialized view aggregates every inserted block again (18.16 does not cascade
    views), so one per resolution cost the shards 6-7 times the raw insert (issue 17,
    docs/performance.md "ClickHouse inserts"): hours and days are not views.
``rollup_1h_<table>_local``, ``rollup_1d_<table>_local``: filled, not fed
    The collector's maintainer (:mod:`.maintain`) recomputes them on each shard from the
    finer table (1h from 1m when an hour ends, 1d from 1h when a day ends, and again for late
    flows), a whole partition at a time (:data:`PARTITION_MS`), into
    ``rollup_<res>_<table>_fill`` and then ``ALTER TABLE ... REPLACE PARTITION`` (atomic;
    18.16 has it), so a recomputation can run any number of times: idempotent.
``rollup_touched_local`` / ``rollup_touched``, ``rollup_filled_local`` / ``rollup_filled``
    Which hours got flows when (one view: ``hour``, the shard's clock at insert ``touched``,
    ms), and the maintainer's completed passes (``done``: every hour that ended by ``done``
    and was touched before it is in 1h and 1d on every shard). The maintainer recomputes
    what was touched since its last pass; the reports' planner
    (:func:`lanalyze.flows.query.clickhouse.plan`) reads 1h and 1d only for hours they
    cover, the minute rollups (always complete) for the rest, so answers never depend on
    whether the maintainer has run.

Versions: SQL that 18.16 (Debian's) and current releases both accept. Where the server has
table TTL (19.6 and later, detected by :func:`features`), the retention of
``flows.rollup.*_max_age`` is also written as a TTL; partitions are dropped by
:mod:`.retention` on every version.

Trust: the names here are ours; ``database`` and ``cluster`` come from the validated
configuration (plain identifiers only). Nothing from a peer or a report request reaches this
SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lanalyze.flows.catalogue import COLUMNS, Column
from lanalyze.flows.errors import SchemaMismatch
from lanalyze.flows.store.layout import DAY_MS, HOUR_MS, MINUTE_MS, ROLLUP_TABLES, RollupTable

BATCH_COLUMN = "batch_id"
RAW_LOCAL = "flows_local"
RAW = "flows"
SUMS = ("bytes", "packets", "flows")
RESOLUTIONS: dict[str, int] = {"1m": MINUTE_MS, "1h": HOUR_MS, "1d": DAY_MS}
"""Rollup resolutions kept in ClickHouse (6 h and weeks are cheap sums of these there)."""
PARTITION_MS: dict[str, int] = {"raw": DAY_MS, "1m": DAY_MS, "1h": 6 * HOUR_MS, "1d": 7 * DAY_MS}
"""Span of one partition per kind: retention drops whole partitions older than the limit, and
the maintainer recomputes a whole hour-table partition when one of its hours ends: 6 hours
(4 partitions a day, 360 for the default 90 days) read each minute row ~3.5 times, where day
partitions read it ~12.5 times (every ended hour re-reading the day so far)."""

_TYPES: dict[str, str] = {
    "u8": "UInt8",
    "u16": "UInt16",
    "u32": "UInt32",
    "u64": "UInt64",
    "ip": "FixedString(16)",
    "mac": "UInt64",
    "time_ms": "UInt64",
    "str": "Nullable(String)",
}
TEXT_DIMENSIONS = frozenset(c.name for c in COLUMNS if c.kind == "str" and c.dimension)
"""The enrichment names (:mod:`lanalyze.flows.enrich`): ``String``, not ``Nullable(String)``
as in Parquet, because they are rollup sort keys and a sorting key cannot hold a nullable
column (18.16 refuses the table). Unknown is ``''`` here: the writer turns null into ``''``
and the reports turn ``''`` back into null (:mod:`lanalyze.flows.query.clickhouse`), so both
backends answer alike. ``extra``, never a key, stays nullable."""
DERIVED: dict[str, tuple[str, str]] = {
    "service_port": ("UInt16", "if(dst_port <= src_port, dst_port, src_port)"),
}
"""Derived rollup columns: (type, SQL over raw columns), as layout.DERIVED_SQL embedded."""

FILLED: dict[str, str] = {"1h": "1m", "1d": "1h"}
"""Resolutions the maintainer fills, each from the finer one (in this order)."""
VIEWS = tuple(r for r in RESOLUTIONS if r not in FILLED)
"""Resolutions fed by materialized views from the raw table: the minute rollups."""
TOUCHED_LOCAL = "rollup_touched_local"
TOUCHED = "rollup_touched"
FILLED_LOCAL = "rollup_filled_local"
FILLED_TABLE = "rollup_filled"
OBSOLETE = tuple(
    f"rollup_{resolution}_{table.name}_mv" for resolution in FILLED for table in ROLLUP_TABLES
)
"""Views of earlier versions (hours and days fed on every insert): dropped at start, the
maintainer fills those tables now (their data stays)."""

Kind = Literal["local", "view", "distributed"]


def ch_type(column: Column) -> str:
    if column.name in TEXT_DIMENSIONS:
        return "String"
    return _TYPES[column.kind]


def raw_columns() -> list[tuple[str, str]]:
    """(name, type) of ``flows_local`` / ``flows``: the catalogue, then ``batch_id``."""
    return [(c.name, ch_type(c)) for c in COLUMNS] + [(BATCH_COLUMN, "UInt64")]


def rollup_name(resolution: str, table: str) -> str:
    """The Distributed rollup table of a resolution (``1m``, ``1h``, ``1d``) and rollup table."""
    return f"rollup_{resolution}_{table}"


def _dimension_type(name: str) -> str:
    if name in DERIVED:
        return DERIVED[name][0]
    return ch_type(next(c for c in COLUMNS if c.name == name))


def rollup_columns(table: RollupTable) -> list[tuple[str, str]]:
    return [
        ("time", "UInt64"),
        *((name, _dimension_type(name)) for name in table.columns),
        *((name, "UInt64") for name in SUMS),
    ]


@dataclass(frozen=True)
class ServerFeatures:
    version: tuple[int, ...]
    ttl: bool
    """Table TTL expressions (19.6+)."""


def features(version: str) -> ServerFeatures:
    """What a server of this ``SELECT version()`` supports beyond 18.16."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3]) or (0,)
    return ServerFeatures(version=parts, ttl=parts >= (19, 6))


BASELINE = features("18.16.1")
"""What ``flows schema`` prints without a server: SQL for every supported version."""


@dataclass(frozen=True)
class Retention:
    """Days kept per kind (0: no limit), from ``flows.rollup.*_max_age``."""

    raw: float = 0
    minute: float = 0
    hour: float = 0
    day: float = 0

    def days(self, kind: str) -> float:
        return {"raw": self.raw, "1m": self.minute, "1h": self.hour, "1d": self.day}[kind]

    @classmethod
    def from_config(cls, rollup: Any) -> Retention:
        return cls(
            raw=rollup.raw_max_age,
            minute=rollup.minute_max_age,
            hour=rollup.hour_max_age,
            day=rollup.day_max_age,
        )


@dataclass(frozen=True)
class Table:
    name: str
    kind: Kind
    columns: tuple[tuple[str, str], ...]
    engine: str
    """The engine name ``system.tables`` shows (compared at start)."""
    create: str
    keep: str | None = None
    """``raw``, ``1m``, ``1h``, ``1d``: whose ``*_max_age`` drops this local table's old
    partitions (None: kept, or transient)."""

    @property
    def retention_kind(self) -> str | None:
        return self.keep


def _ttl(time_column: str, days: float, server: ServerFeatures) -> str:
    if not server.ttl or days <= 0:
        return ""
    seconds = int(days * 86400)
    return f" TTL toDateTime(intDiv({time_column}, 1000)) + INTERVAL {seconds} SECOND"


def _column_list(columns: Iterable[tuple[str, str]]) -> str:
    return ",\n    ".join(f"{name} {kind}" for name, kind in columns)


def tables(
    database: str,
    cluster: str,
    server: ServerFeatures = BASELINE,
    retention: Retention | None = None,
) -> list[Table]:
    """Every table in creation order (local tables, then views on them, then Distributed)."""
    keep = retention or Retention()
    raw_cols = tuple(raw_columns())
    result = [
        Table(
            RAW_LOCAL,
            "local",
            raw_cols,
            "MergeTree",
            f"CREATE TABLE {database}.{RAW_LOCAL} (\n    {_column_list(raw_cols)}\n)"
            f" ENGINE = MergeTree PARTITION BY intDiv(time_received, {PARTITION_MS['raw']})"
            f" ORDER BY time_received{_ttl('time_received', keep.raw, server)}",
            keep="raw",
        ),
        Table(
            TOUCHED_LOCAL,
            "local",
            (("hour", "UInt64"), ("touched", "UInt64")),
            "ReplacingMergeTree",
            f"CREATE TABLE {database}.{TOUCHED_LOCAL} (hour UInt64, touched UInt64)"
            f" ENGINE = ReplacingMergeTree(touched) PARTITION BY intDiv(hour, {DAY_MS})"
            f" ORDER BY hour{_ttl('hour', keep.hour, server)}",
            keep="1h",
        ),
        Table(
            FILLED_LOCAL,
            "local",
            (("slot", "UInt8"), ("done", "UInt64")),
            "ReplacingMergeTree",
            f"CREATE TABLE {database}.{FILLED_LOCAL} (slot UInt8, done UInt64)"
            " ENGINE = ReplacingMergeTree(done) ORDER BY slot",
        ),
    ]
    views = [
        Table(
            "rollup_touched_mv",
            "view",
            (("hour", "UInt64"), ("touched", "UInt64")),
            "MaterializedView",
            # names are ours and the validated configuration's identifiers
            f"CREATE MATERIALIZED VIEW {database}.rollup_touched_mv TO {database}.{TOUCHED_LOCAL}"  # noqa: S608
            f" AS SELECT intDiv(time_received, {HOUR_MS}) * {HOUR_MS} AS hour,"
            f" toUInt64(now()) * 1000 AS touched FROM {database}.{RAW_LOCAL} GROUP BY hour",
        )
    ]
    distributed = [
        Table(
            RAW,
            "distributed",
            raw_cols,
            "Distributed",
            f"CREATE TABLE {database}.{RAW} AS {database}.{RAW_LOCAL}"
            f" ENGINE = Distributed({cluster}, {database}, {RAW_LOCAL}, {BATCH_COLUMN})",
        ),
        *(
            Table(
                name,
                "distributed",
                local.columns,
                "Distributed",
                f"CREATE TABLE {database}.{name} AS {database}.{local.name}"
                f" ENGINE = Distributed({cluster}, {database}, {local.name})",
            )
            for name, local in ((TOUCHED, result[1]), (FILLED_TABLE, result[2]))
        ),
    ]
    for resolution, width in RESOLUTIONS.items():
        for rollup in ROLLUP_TABLES:
            name = rollup_name(resolution, rollup.name)
            cols = tuple(rollup_columns(rollup))
            keys = ", ".join(("time", *rollup.columns))
            engine = (
                f" ENGINE = SummingMergeTree(({', '.join(SUMS)}))"
                f" PARTITION BY intDiv(time, {PARTITION_MS[resolution]}) ORDER BY ({keys})"
            )
            result.append(
                Table(
                    f"{name}_local",
                    "local",
                    cols,
                    "SummingMergeTree",
                    f"CREATE TABLE {database}.{name}_local (\n    {_column_list(cols)}\n)"
                    f"{engine}{_ttl('time', keep.days(resolution), server)}",
                    keep=resolution,
                )
            )
            if resolution in FILLED:
                # where a recomputed partition is built before it replaces the table's
                result.append(
                    Table(
                        f"{name}_fill",
                        "local",
                        cols,
                        "SummingMergeTree",
                        f"CREATE TABLE {database}.{name}_fill (\n    {_column_list(cols)}\n)"
                        f"{engine}",
                    )
                )
            else:
                selected = [f"intDiv(time_received, {width}) * {width} AS time"]
                for column in rollup.columns:
                    selected.append(
                        f"{DERIVED[column][1]} AS {column}" if column in DERIVED else column
                    )
                selected += [
                    "sum(bytes * sampling_rate) AS bytes",
                    "sum(packets * sampling_rate) AS packets",
                    "sum(flows) AS flows",
                ]
                views.append(
                    Table(
                        f"{name}_mv",
                        "view",
                        cols,
                        "MaterializedView",
                        # names are ours and the validated configuration's identifiers
                        f"CREATE MATERIALIZED VIEW {database}.{name}_mv TO {database}.{name}_local"  # noqa: S608
                        f" AS SELECT {', '.join(selected)} FROM {database}.{RAW_LOCAL}"
                        f" GROUP BY {keys}",
                    )
                )
            distributed.append(
                Table(
                    name,
                    "distributed",
                    cols,
                    "Distributed",
                    f"CREATE TABLE {database}.{name} AS {database}.{name}_local"
                    f" ENGINE = Distributed({cluster}, {database}, {name}_local)",
                )
            )
    return result + views + distributed


def ddl(database: str, cluster: str, server: ServerFeatures = BASELINE) -> str:
    """The whole schema as SQL text, run on every server (``lanalyze flows schema``)."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    statements += [table.create for table in tables(database, cluster, server)]
    return ";\n\n".join(statements) + ";\n"


@dataclass
class Existing:
    """What one server has: table -> engine, table -> [(column, type)]."""

    engines: dict[str, str]
    columns: dict[str, list[tuple[str, str]]]


def read_existing(client: Any, database: str) -> Existing:
    params = {"db": database}
    engines = dict(
        client.execute("SELECT name, engine FROM system.tables WHERE database = %(db)s", params)
    )
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, name, kind in client.execute(
        "SELECT table, name, type FROM system.columns WHERE database = %(db)s", params
    ):
        columns.setdefault(table, []).append((name, kind))
    return Existing(engines, columns)


def differences(expected: Sequence[Table], existing: Existing, server: str) -> list[str]:
    """What differs, one line each, naming server, table and column."""
    problems = []
    for table in expected:
        engine = existing.engines.get(table.name)
        if engine is None:
            continue
        if engine != table.engine:
            problems.append(f"{server}: {table.name} is {engine}, expected {table.engine}")
            continue
        if table.kind == "view":
            continue  # a view's columns are its SELECT's; its target table is compared
        have = existing.columns.get(table.name, [])
        if have != list(table.columns):
            problems.append(f"{server}: {table.name}: {_describe(have, list(table.columns))}")
    return problems


def _describe(have: list[tuple[str, str]], want: list[tuple[str, str]]) -> str:
    have_map, want_map = dict(have), dict(want)
    parts = [f"column {n} missing" for n in want_map if n not in have_map]
    parts += [f"unexpected column {n}" for n in have_map if n not in want_map]
    parts += [
        f"column {n} is {have_map[n]}, expected {t}"
        for n, t in want_map.items()
        if n in have_map and have_map[n] != t
    ]
    return "; ".join(parts) or "columns in another order"


def ensure(
    client: Any,
    server: str,
    database: str,
    cluster: str,
    retention: Retention | None = None,
) -> list[str]:
    """Create on one server what is missing; raise :class:`SchemaMismatch` when an existing
    table differs. Returns the names of the tables created."""
    version = client.execute("SELECT version()")[0][0]
    expected = tables(database, cluster, features(str(version)), retention)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    existing = read_existing(client, database)
    for view in OBSOLETE:
        if existing.engines.get(view) == "MaterializedView":
            # an earlier version's view feeding hours or days: the maintainer fills those
            # tables now, a view beside it would count every flow twice
            client.execute(f"DROP TABLE {database}.{view}")
            del existing.engines[view]
    problems = differences(expected, existing, server)
    if problems:
        raise SchemaMismatch(
            "the ClickHouse tables differ from this version's schema "
            "(`lanalyze flows schema --backend clickhouse` prints it): " + "; ".join(problems)
        )
    created = []
    for table in expected:
        if table.name not in existing.engines:
            client.execute(table.create)
            created.append(table.name)
    return created
