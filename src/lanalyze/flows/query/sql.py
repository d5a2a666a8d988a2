"""SQL text of the flow reports, for one dialect (DuckDB over Parquet files).

Pure functions: a plan (:mod:`~lanalyze.flows.query.planner`) and a report's columns in,
a :class:`Statement` (text and parameters) out; nothing here opens a file or a connection
(:mod:`~lanalyze.flows.query.engine` runs what comes out). Every column of every query has a
name (``bucket``, ``d0_srcip``, ``nbytes``, ``in_bytes``), so a statement reads as what it
computes.

Trust: the text is built from fixed fragments, the catalogue's column names and aliases made
of them; every value the user gave (filter values, limits, buckets, keys) is a parameter.
The ClickHouse backend's dialect (:mod:`~lanalyze.flows.query.clickhouse`) reuses what
both servers read alike and writes the rest its own way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lanalyze.flows.query import filtered
from lanalyze.flows.query.compile import CompiledFilter
from lanalyze.flows.query.dimensions import Dimension, KeyExpr
from lanalyze.flows.query.planner import Piece, Plan
from lanalyze.flows.query.raw import raw_reader
from lanalyze.flows.store.layout import DERIVED_SQL


@dataclass
class Statement:
    sql: str
    params: list[object] = field(default_factory=list)


@dataclass(frozen=True)
class Column:
    """One named output column of a piece: ``expr`` (``{b}`` etc. name the piece's sums and
    time, see :meth:`Dialect.metrics`) ``AS name``."""

    name: str
    expr: KeyExpr


SUMS = (
    Column("nbytes", KeyExpr("{b}")),
    Column("npackets", KeyExpr("{p}")),
    Column("nflows", KeyExpr("{f}")),
)
"""What every summing report reads per piece: bytes and packets scaled by sampling, flows."""

Planned = list[tuple[Plan, list[Column]]]
"""Plans and the columns read through each (an either-side dimension plans each side)."""

SharedSource = Callable[[list[str], CompiledFilter], str | None]
"""Name of a table holding the flows of these raw files that pass the filter (None: none)."""


def dimension_alias(index: int, dim: Dimension) -> str:
    """``d0_srcip``, ``d1_srcnet_24``: a dimension's key column in the report's SQL."""
    return f"d{index}_" + re.sub(r"[^a-z0-9]+", "_", dim.name.lower()).strip("_")


def key_names(dims: Sequence[Dimension]) -> list[str]:
    """Output names of the dimensions' keys (one per key; ``_0``, ``_1`` for wider ones)."""
    names: list[str] = []
    for index, dim in enumerate(dims):
        alias = dimension_alias(index, dim)
        names.extend([alias] if dim.width == 1 else [f"{alias}_{i}" for i in range(dim.width)])
    return names


def base_columns(dims: Sequence[Dimension], variant: int) -> list[Column]:
    """The stored columns a dimension's keys are computed from, named by the dimension (so
    both sides of an either-side one land in the same column of the union)."""
    columns: list[Column] = []
    for index, dim in enumerate(dims):
        alias = dimension_alias(index, dim)
        for position, stored in enumerate(dim.variant_needs_ordered(variant)):
            name = f"{alias}__side" if dim.either else f"{alias}__{dim.bases[0][position]}"
            columns.append(Column(name, KeyExpr(stored)))
    return columns


class Dialect(Protocol):
    """SQL generation for one query backend (:class:`DuckDB`; ``clickhouse.ClickHouse``)."""

    def piece(
        self,
        piece: Piece,
        columns: Sequence[Column],
        flt: CompiledFilter,
        shared: SharedSource,
    ) -> Statement: ...

    def union(self, planned: Planned, flt: CompiledFilter, shared: SharedSource) -> Statement: ...

    def aggregate(
        self,
        planned: Planned,
        flt: CompiledFilter,
        shared: SharedSource,
        head: Sequence[str],
        dims: Sequence[Dimension],
    ) -> Statement: ...

    def top(
        self, aggregated: Statement, keys: Sequence[str], order: str, limit: int
    ) -> Statement: ...

    def restrict(
        self,
        aggregated: Statement,
        keys: Sequence[str],
        values: Sequence[tuple[object, ...]] | None,
        *,
        collapse: bool,
    ) -> Statement: ...

    def interfaces(self, union: Statement, order: str, limit: int) -> Statement: ...

    def exporter_totals(self, union: Statement, key: str, limit: int) -> Statement: ...

    def interface_series(self, union: Statement) -> Statement: ...

    def newest(self, piece: Statement, limit: int, ties: Sequence[str]) -> Statement: ...

    def time_range(self, files: list[str], time_column: str) -> Statement: ...


class DuckDB:
    """DuckDB over ``read_parquet`` of the planned files."""

    def metrics(self, piece: Piece) -> dict[str, str]:
        """``{b}``, ``{p}``, ``{f}``, ``{t}`` of a piece: raw flows are scaled by their
        sampling rate here, rollup parts hold scaled sums already."""
        if piece.source == "raw":
            return {
                "b": "(bytes * sampling_rate)",
                "p": "(packets * sampling_rate)",
                "f": "flows",
                "t": "time_received",
            }
        return {"b": "bytes", "p": "packets", "f": "flows", "t": "time"}

    def piece(
        self,
        piece: Piece,
        columns: Sequence[Column],
        flt: CompiledFilter,
        shared: SharedSource,
    ) -> Statement:
        names = self.metrics(piece)
        params: list[object] = []
        selected = []
        expressions = []
        for column in columns:
            expression = column.expr.sql.format(**names)
            expressions.append(expression)
            selected.append(f"{expression} AS {column.name}")
            params.extend(column.expr.params)
        select = ", ".join(selected)
        table = None
        if piece.source == "raw" and not flt.is_true and filtered.covers(" ".join(expressions)):
            table = shared(piece.files, flt)
        derived = ", ".join(f"{sql} AS {name}" for name, sql in DERIVED_SQL.items())
        if table is not None:
            # The flows of these files that pass the filter, read once for all of a page's
            # reports (a drill-down's filter keeps few): see filtered.py.
            source = f"(SELECT *, {derived} FROM {table})"  # noqa: S608 (a generated name)
        elif piece.source == "raw":
            reader = raw_reader(" ".join(expressions) + " " + flt.sql)
            source = f"(SELECT *, {derived} FROM {reader})"  # noqa: S608
            params.append(piece.files)
        else:
            source = "read_parquet(?)"
            params.append(piece.files)
        time_sql = " OR ".join(f"({names['t']} >= ? AND {names['t']} < ?)" for _ in piece.intervals)
        for lo, hi in piece.intervals:
            params.extend((lo, hi))
        if table is not None:
            # Those rows passed the filter already (and may lack its columns).
            return Statement(f"SELECT {select} FROM {source} WHERE ({time_sql})", params)  # noqa: S608
        params.extend(flt.params)
        return Statement(
            f"SELECT {select} FROM {source} WHERE ({time_sql}) AND {flt.sql}",  # noqa: S608
            params,
        )

    def union(self, planned: Planned, flt: CompiledFilter, shared: SharedSource) -> Statement:
        """Every piece of every plan, ``UNION ALL`` (the columns line up by position)."""
        parts: list[str] = []
        params: list[object] = []
        for the_plan, columns in planned:
            for piece in the_plan.pieces:
                statement = self.piece(piece, columns, flt, shared)
                parts.append(statement.sql)
                params.extend(statement.params)
        return Statement(" UNION ALL ".join(parts), params)

    def aggregate(
        self,
        planned: Planned,
        flt: CompiledFilter,
        shared: SharedSource,
        head: Sequence[str],
        dims: Sequence[Dimension],
    ) -> Statement:
        """The ``head`` columns, the dimensions' keys (:func:`key_names`), then ``bytes``,
        ``packets``, ``flows`` summed per key.

        First sums per exact stored values (head and base columns), then, if a dimension
        derives its keys (subnet, conversation), sums again per derived key, so the
        derivation runs once per distinct value, not once per flow.
        """
        union = self.summed_union(planned, flt, shared)
        bases = [*head, *(c.name for c in base_columns(dims, 0))]
        sums = "sum(nbytes) AS bytes, sum(npackets) AS packets, sum(nflows) AS flows"
        if bases:
            grouped = ", ".join(bases)
            inner = f"SELECT {grouped}, {sums} FROM ({union.sql}) GROUP BY {grouped}"  # noqa: S608
        else:
            inner = f"SELECT {sums} FROM ({union.sql})"  # noqa: S608
        keys: list[str] = list(head)
        aliases: list[str] = list(head)
        params: list[object] = []
        names = iter(key_names(dims))
        offset = len(head)
        for dim in dims:
            own = bases[offset : offset + len(dim.bases[0])]
            offset += len(own)
            for key in self.keys(dim):
                alias = next(names)
                keys.append(f"{key.sql.format(*own)} AS {alias}")
                aliases.append(alias)
                params.extend(key.params)
        selected = ", ".join(keys) + ", " if keys else ""
        if all(d.identity for d in dims):
            sql = f"SELECT {selected}bytes, packets, flows FROM ({inner})"  # noqa: S608
        else:
            sql = (
                f"SELECT {selected}sum(bytes) AS bytes, sum(packets) AS packets, "  # noqa: S608
                f"sum(flows) AS flows FROM ({inner}) {self.group_by(aliases)}"
            )
        return Statement(sql, params + union.params)

    def summed_union(
        self, planned: Planned, flt: CompiledFilter, shared: SharedSource
    ) -> Statement:
        """The union :meth:`aggregate` sums per key (DuckDB: every row as it is)."""
        return self.union(planned, flt, shared)

    def keys(self, dim: Dimension) -> tuple[KeyExpr, ...]:
        """The SQL of a dimension's keys in this dialect (:attr:`Dimension.keys`)."""
        return dim.keys

    def group_by(self, aliases: Sequence[str]) -> str:
        """``GROUP BY`` the named output columns."""
        return "GROUP BY ALL"

    def top(self, aggregated: Statement, keys: Sequence[str], order: str, limit: int) -> Statement:
        """Rows by ``order`` (``bytes``, ``packets`` or ``flows``: checked by the caller),
        each with the totals of all rows (``total_bytes``...)."""
        order_column = {"bytes": "bytes", "packets": "packets", "flows": "flows"}[order]
        ties = "".join(f", {key}" for key in keys)
        sql = (
            "SELECT *, sum(bytes) OVER () AS total_bytes, sum(packets) OVER () AS total_packets, "  # noqa: S608
            f"sum(flows) OVER () AS total_flows FROM ({aggregated.sql}) "
            f"ORDER BY {order_column} DESC{ties}"
        )
        params = list(aggregated.params)
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return Statement(sql, params)

    def restrict(
        self,
        aggregated: Statement,
        keys: Sequence[str],
        values: Sequence[tuple[object, ...]] | None,
        *,
        collapse: bool,
    ) -> Statement:
        """Series rows of the ``values`` keys only (None: all); per bucket alone if
        ``collapse``."""
        params = list(aggregated.params)
        where = "TRUE"
        if values:
            conditions = []
            for row in values:
                conditions.append("(" + " AND ".join(f"{key} = ?" for key in keys) + ")")
                params.extend(row)
            where = " OR ".join(conditions)
        if collapse:
            return Statement(
                "SELECT bucket, sum(bytes) AS bytes, sum(packets) AS packets, "  # noqa: S608
                f"sum(flows) AS flows FROM ({aggregated.sql}) WHERE {where} GROUP BY bucket",
                params,
            )
        return Statement(f"SELECT * FROM ({aggregated.sql}) WHERE {where}", params)  # noqa: S608

    def interfaces(self, union: Statement, order: str, limit: int) -> Statement:
        """Per (exporter, if_index) the in and out sums of the union's columns of the same
        names, ranked by in + out of ``order``."""
        rank = {
            "bytes": "sum(in_bytes) + sum(out_bytes)",
            "packets": "sum(in_packets) + sum(out_packets)",
            "flows": "sum(in_flows) + sum(out_flows)",
        }[order]
        sql = (
            "SELECT exporter, if_index, sum(in_bytes), sum(out_bytes), sum(in_packets), "  # noqa: S608
            f"sum(out_packets), sum(in_flows), sum(out_flows) FROM ({union.sql}) "
            f"GROUP BY exporter, if_index ORDER BY {rank} DESC, exporter, if_index"
        )
        params = list(union.params)
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return Statement(sql, params)

    def exporter_totals(self, union: Statement, key: str, limit: int) -> Statement:
        """Per ``key`` (the exporter column of the union) the sums and the smallest and
        largest ``received`` (a raw flow's receive time, a rollup bucket's start): the
        ``limit`` exporters with the most bytes."""
        return Statement(
            f"SELECT {key}, sum(nbytes), sum(npackets), sum(nflows), min(received), "  # noqa: S608
            f"max(received) FROM ({union.sql}) GROUP BY {key} "
            f"ORDER BY sum(nbytes) DESC, {key} LIMIT ?",
            [*union.params, limit],
        )

    def interface_series(self, union: Statement) -> Statement:
        return Statement(
            "SELECT bucket, sum(in_bytes), sum(out_bytes) "  # noqa: S608
            f"FROM ({union.sql}) GROUP BY bucket ORDER BY bucket",
            list(union.params),
        )

    def newest(self, piece: Statement, limit: int, ties: Sequence[str]) -> Statement:
        """The ``limit`` newest rows of ``piece``; flows received in the same millisecond
        in the order of the ``ties`` columns (ascending), so every backend lists the same."""
        order = ", ".join(["time_received DESC", *ties])
        return Statement(f"{piece.sql} ORDER BY {order} LIMIT ?", [*piece.params, limit])

    def time_range(self, files: list[str], time_column: str) -> Statement:
        """Rows and the smallest and largest ``time_column`` of files, from their footers."""
        return Statement(
            "SELECT sum(row_group_num_rows), min(TRY_CAST(stats_min_value AS UBIGINT)), "
            "max(TRY_CAST(stats_max_value AS UBIGINT)) FROM parquet_metadata(?) "
            "WHERE path_in_schema = ?",
            [files, time_column],
        )
