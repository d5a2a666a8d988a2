"""Flow reports on a ClickHouse cluster: the dialect, the tables a plan reads, the backend.

``[flows.store] backend = "clickhouse"`` keeps flows in a ClickHouse cluster instead of the
embedded Parquet store (issue 17; the storage side, schema and inserts, is
:mod:`lanalyze.flows.store`'s). The reports are the same modules: they plan with
:func:`lanalyze.flows.query.engine.plan` and build their SQL with the backend's
:class:`~lanalyze.flows.query.sql.Dialect`; here those answer with ClickHouse tables and text.

Tables (:mod:`lanalyze.flows.store.clickhouse.schema`; the reports read the Distributed
tables over the shards' local ones): raw flows in ``flows``, the catalogue's columns and types
(addresses ``FixedString(16)``, IPv4-mapped, as in the Parquet files; times UInt64 UTC ms;
enrichment names ``String`` with ``''`` for unknown, which the dialect's keys make null again
with ``nullIf`` so that answers hold ``None`` as from Parquet, and which the backend decodes
to text: every other string of an answer stays bytes);
per rollup table and resolution (``1m``, ``1h``, ``1d``) ``rollup_<res>_<table>``: ``time``
(bucket start, ms), the table's columns and the sums ``bytes``, ``packets`` (scaled by
sampling) and ``flows``. Materialized views feed ``1m`` with every insert; the collector's
maintainer fills ``1h`` and ``1d`` from it (:mod:`lanalyze.flows.store.clickhouse.maintain`)
and says how far in ``rollup_filled``, and ``rollup_touched`` holds when each hour last got
flows. A plan (:func:`plan`) therefore takes whole days from ``1d`` and whole hours from ``1h``
only where they are filled (:class:`Coverage`), whole minutes from ``1m``, the edges raw;
every flow counts once, as with the embedded planner. There are no ``6h`` or ``1w`` tables:
a bucket of 6 hours or a week is whole hours and days, summed from ``1h`` and ``1d``.

The packaged server (18.16) has no server-side parameters, window functions, ``TRUE``,
``&`` operator, ``::`` casts, ``GROUP BY ALL`` or ``least``/``greatest`` over strings, and
``concat`` of FixedStrings alone mistypes its result: the text here avoids them all (the
totals of a top-N ride along in one pass with ``groupArray`` + ``ARRAY JOIN``, subnets mask
the address as two UInt64 halves).

Trust: the text is built from fixed fragments, the catalogue's column names and our table
names; every value (filter values, limits, buckets, keys, masks) is a parameter, bound by
clickhouse-driver on the client (``%(pN)s``, escaped by it): :func:`bind`. The driver would
render ``bytes`` as ``b'..'``, which the server refuses, so a bytes value travels as its hex
text inside ``unhex()``. Answers come from our own server.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanalyze.flows.config import StoreConfig
from lanalyze.flows.errors import ReportError
from lanalyze.flows.query import engine
from lanalyze.flows.query.compile import CompiledFilter
from lanalyze.flows.query.dimensions import V4_HIGH, V4_LOW, Dimension, KeyExpr
from lanalyze.flows.query.planner import (
    Interval,
    Piece,
    Plan,
    _ceil,
    _floor,
    _subtract,
    choose_table,
)
from lanalyze.flows.query.sql import (
    SUMS,
    Column,
    Dialect,
    DuckDB,
    Planned,
    SharedSource,
    Statement,
)
from lanalyze.flows.store.clickhouse import connect, schema
from lanalyze.flows.store.layout import DAY_MS, DERIVED_SQL, HOUR_MS, RESOLUTIONS, ROLLUP_TABLES

TOO_MANY_BYTES = 307
"""The server's error code for a query over its ``max_bytes_to_read``."""
ROLLUP_RESOLUTIONS = tuple(sorted(schema.RESOLUTIONS, key=schema.RESOLUTIONS.__getitem__))[::-1]
"""Resolutions the ClickHouse rollups are kept at, coarsest first."""

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Coverage:
    """How far the maintainer filled the hour and day rollups: every hour that ended by
    ``done`` is in them, except the ``stale`` hours (flows arrived after the last pass)."""

    done: int = 0
    stale: frozenset[int] = frozenset()

    def usable(self, resolution: str, intervals: list[Interval]) -> list[Interval]:
        """The parts of ``intervals`` a filled resolution may answer."""
        if resolution not in schema.FILLED:
            return intervals  # the minute rollups are fed as flows arrive: always whole
        step = RESOLUTIONS[resolution]
        blocked = sorted({(_floor(hour, step), _floor(hour, step) + step) for hour in self.stale})
        clipped = [(lo, min(hi, self.done)) for lo, hi in intervals if lo < self.done]
        return _subtract(clipped, blocked)


FILLED_EVERYWHERE = Coverage(done=2**63)
"""For tests and tools that know the hour and day tables are whole."""


def plan(
    since: int,
    until: int,
    needs: frozenset[str],
    *,
    finest_bucket: int | None = None,
    use_rollups: bool = True,
    coverage: Coverage = FILLED_EVERYWHERE,
) -> Plan:
    """The pieces answering ``needs`` over ``[since, until)``: the first rollup table that
    holds the columns (the embedded planner's choice) at the coarsest resolutions that fit
    (and divide ``finest_bucket``) where ``coverage`` allows, raw flows for the rest."""
    table = choose_table(needs) if use_rollups else None
    result = Plan(table=table)
    remaining: list[Interval] = [(since, until)] if since < until else []
    if table is not None:
        for resolution in ROLLUP_RESOLUTIONS:
            step = RESOLUTIONS[resolution]
            if finest_bucket is not None and finest_bucket % step != 0:
                continue
            used = [
                (_ceil(lo, step), _floor(hi, step))
                for lo, hi in coverage.usable(resolution, remaining)
                if _ceil(lo, step) < _floor(hi, step)
            ]
            if used:
                result.pieces.append(Piece(resolution, table, [], used))
                remaining = _subtract(remaining, used)
    if remaining:
        result.pieces.append(Piece("raw", None, [], remaining))
    return result


# DuckDB key SQL (dimensions.py) -> the same values in ClickHouse 18.16's words.
_KEYS = {
    "least({0}, {1})": "if({0} <= {1}, {0}, {1})",
    "greatest({0}, {1})": "if({0} <= {1}, {1}, {0})",
    "{0} >> 2": "bitShiftRight({0}, 2)",
}
_BASE = re.compile(r"\{(\d+)\}")
_TRUE = re.compile(r"\bTRUE\b")
_BIT_AND = re.compile(r"\(([a-z_]+) & \?\)")


def portable(sql: str) -> str:
    """The filter compiler's and the reports' DuckDB words ClickHouse 18.16 lacks."""
    return _BIT_AND.sub(r"bitAnd(\1, ?)", _TRUE.sub("1", sql))


def _half(address: str, start: int) -> str:
    """Eight bytes of a FixedString(16) address, big-endian, masked with a parameter."""
    word = f"reinterpretAsUInt64(reverse(substring({address}, {start}, 8)))"
    return f"reverse(toFixedString(reinterpretAsString(bitAnd({word}, ?)), 8))"


def _masks(bits: int) -> tuple[int, int]:
    mask = ((1 << bits) - 1) << (128 - bits) if bits else 0
    return mask >> 64, mask & (2**64 - 1)


def subnet_key(v4_length: int, v6_length: int) -> KeyExpr:
    """The subnet of ``{0}`` as 16 bytes, as DuckDB's ``::BIT`` masking computes it."""
    # ``concat`` of FixedStrings alone mistypes its result on 18.16, and ``toString`` of
    # one drops its trailing zero bytes: a leading '' makes the concatenation a String.
    masked = "toFixedString(concat('', {a}, {b}), 16)".format(a=_half("{0}", 1), b=_half("{0}", 9))
    return KeyExpr(
        f"if({{0}} BETWEEN ? AND ?, {masked}, {masked})",
        (V4_LOW, V4_HIGH, *_masks(96 + v4_length), *_masks(v6_length)),
    )


class ClickHouse(DuckDB):
    """ClickHouse text over the Distributed tables of ``database``; what both servers read
    alike (interfaces, exporter totals, series per interface) is DuckDB's."""

    def __init__(self, database: str) -> None:
        self.database = database

    def table(self, piece: Piece) -> str:
        if piece.source == "raw":
            return f"{self.database}.{schema.RAW}"
        assert piece.table is not None
        return f"{self.database}.{schema.rollup_name(piece.source, piece.table.name)}"

    def keys(self, dim: Dimension) -> tuple[KeyExpr, ...]:
        if dim.prefix is not None:
            return (subnet_key(*dim.prefix),)
        found = []
        for key in dim.keys:
            sql = _KEYS.get(key.sql, key.sql)
            base = _BASE.fullmatch(sql)
            if base and dim.bases[0][int(base[1])] in schema.TEXT_DIMENSIONS:
                # An unknown name is '' in ClickHouse and null in Parquet: null again, the
                # same key (and the column Nullable(String): see ClickHouseBackend.run).
                sql = f"nullIf({sql}, '')"
            found.append(KeyExpr(sql, key.params))
        return tuple(found)

    def group_by(self, aliases: Sequence[str]) -> str:
        return "GROUP BY " + ", ".join(aliases)

    def piece(
        self,
        piece: Piece,
        columns: Sequence[Column],
        flt: CompiledFilter,
        shared: SharedSource,
    ) -> Statement:
        return self._select(piece, columns, flt, summed=False)

    def summed_union(
        self, planned: Planned, flt: CompiledFilter, shared: SharedSource
    ) -> Statement:
        """Each piece already summed per head and base columns, in the ``SELECT`` that reads
        the Distributed table: the shards aggregate their own rows and send the sums (a
        ``GROUP BY`` in an outer query would pull every row to the server asked)."""
        parts: list[str] = []
        params: list[object] = []
        for the_plan, columns in planned:
            for piece in the_plan.pieces:
                statement = self._select(piece, columns, flt, summed=True)
                parts.append(statement.sql)
                params.extend(statement.params)
        return Statement(" UNION ALL ".join(parts), params)

    def _select(
        self, piece: Piece, columns: Sequence[Column], flt: CompiledFilter, *, summed: bool
    ) -> Statement:
        """The piece's columns (``summed``: the :data:`~lanalyze.flows.query.sql.SUMS`
        summed per the others)."""
        names = self.metrics(piece)
        params: list[object] = []
        selected = []
        keys = []
        for column in columns:
            expression = column.expr.sql.format(**names)
            if piece.source == "raw":
                # Derived rollup columns are computed from the raw ones in place (a
                # ``SELECT *`` subquery would read every column of the table).
                for name, sql in DERIVED_SQL.items():
                    expression = re.sub(rf"\b{name}\b", f"({sql})", expression)
            if summed and column in SUMS:
                selected.append(f"sum({expression}) AS {column.name}")
            else:
                selected.append(f"{expression} AS {column.name}")
                keys.append(column.name)
            params.extend(column.expr.params)
        time_sql = " OR ".join(f"({names['t']} >= ? AND {names['t']} < ?)" for _ in piece.intervals)
        for lo, hi in piece.intervals:
            params.extend((lo, hi))
        params.extend(flt.params)
        group = f" GROUP BY {', '.join(keys)}" if summed and keys else ""
        return Statement(
            f"SELECT {', '.join(selected)} FROM {self.table(piece)} "  # noqa: S608
            f"WHERE ({time_sql}) AND {portable(flt.sql)}{group}",
            params,
        )

    def top(self, aggregated: Statement, keys: Sequence[str], order: str, limit: int) -> Statement:
        """As DuckDB's, with the totals of all rows from the same pass (no window functions
        on 18.16): every row into one array beside the sums, then one row per element."""
        order_column = {"bytes": "bytes", "packets": "packets", "flows": "flows"}[order]
        fields = [*keys, "bytes", "packets", "flows"]
        unpacked = ", ".join(f"lanalyze_row.{i + 1} AS {name}" for i, name in enumerate(fields))
        ties = "".join(f", {key}" for key in keys)
        sql = (
            f"SELECT {unpacked}, total_bytes, total_packets, total_flows FROM ("  # noqa: S608
            f"SELECT groupArray(({', '.join(fields)})) AS lanalyze_rows, "
            "sum(bytes) AS total_bytes, sum(packets) AS total_packets, "
            f"sum(flows) AS total_flows FROM ({aggregated.sql})) "
            f"ARRAY JOIN lanalyze_rows AS lanalyze_row ORDER BY {order_column} DESC{ties}"
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
        statement = super().restrict(aggregated, keys, values, collapse=collapse)
        return Statement(portable(statement.sql), statement.params)

    def time_range(self, files: list[str], time_column: str) -> Statement:
        raise AssertionError("ClickHouse keeps no files: see ClickHouseBackend.table_status")


def bind(statement: Statement) -> tuple[str, dict[str, object]]:
    """``?`` placeholders -> clickhouse-driver's ``%(pN)s`` (``%`` in the text doubled, as
    the driver formats with it); bytes as hex text inside ``unhex()``."""
    pieces = statement.sql.replace("%", "%%").split("?")
    if len(pieces) != len(statement.params) + 1:
        raise AssertionError(f"{len(pieces) - 1} placeholders, {len(statement.params)} values")
    out = [pieces[0]]
    values: dict[str, object] = {}
    for index, (value, rest) in enumerate(zip(statement.params, pieces[1:], strict=True)):
        name = f"p{index}"
        if isinstance(value, bytes | bytearray):
            out.append(f"unhex(%({name})s)")
            values[name] = bytes(value).hex()
        elif value is None:
            # A series restricted to a top-N that has the unknown (null) name: ``= NULL``
            # matches nothing, as in DuckDB.
            out.append(f"%({name})s")
            values[name] = None
        elif isinstance(value, bool):
            out.append(f"%({name})s")
            values[name] = int(value)
        elif isinstance(value, int | str):
            out.append(f"%({name})s")
            values[name] = value
        else:
            raise AssertionError(f"no ClickHouse parameter for {type(value).__name__}")
        out.append(rest)
    return "".join(out), values


def _decoded(row: Row, columns: Sequence[int]) -> Row:
    values = list(row)
    for i in columns:
        if values[i] is not None:
            values[i] = values[i].decode()
    return tuple(values)


class ClickHouseBackend:
    """Reports answered by the ClickHouse cluster of ``[flows.store]`` over its native
    protocol (clickhouse-driver, which works with 18.16; clients made by
    :func:`lanalyze.flows.store.clickhouse.connect.client`, failing over along
    ``flows.store.servers``): one client per thread. Inert until the first query."""

    files = False
    dialect: Dialect

    def __init__(self, store: StoreConfig) -> None:
        self.store = store
        self.database = store.database
        self.cluster = store.cluster
        self.dialect = ClickHouse(store.database)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: set[Any] = set()

    def __repr__(self) -> str:  # the servers, never the password
        return f"ClickHouseBackend({connect.servers_text(self.store)}, {self.database!r})"

    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            # FixedString addresses as bytes, like the Parquet store's binary(16).
            client = connect.client(self.store, strings_as_bytes=True)
            self._local.client = client
            with self._lock:
                self._clients.add(client)
        return client

    def _drop(self) -> None:
        """Disconnect this thread's client (after a network error: the next query connects
        again)."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                self._clients.discard(client)
            client.disconnect()

    def close(self) -> None:
        """Disconnect every thread's client (the console's worker threads each have one);
        a later query connects again."""
        with self._lock:
            clients, self._clients = self._clients, set()
        self._local = threading.local()
        for client in clients:
            client.disconnect()

    def run(self, sql: str, params: dict[str, object] | None = None) -> list[Row]:
        """``sql`` with ``params``; a query reading more than ``flows.query.max_raw_bytes``
        (uncompressed, per server: the server counts, there are no files to add up) is
        stopped by the server and refused as the embedded store refuses it."""
        from clickhouse_driver.errors import NetworkError, ServerException, SocketTimeoutError

        limit = engine.max_raw_bytes()
        try:
            rows, types = self.client().execute(
                sql, params, settings={"max_bytes_to_read": limit or 1}, with_column_types=True
            )
        except (NetworkError, SocketTimeoutError, EOFError, OSError) as exc:
            self._drop()
            raise ReportError(
                f"the ClickHouse servers ({connect.servers_text(self.store)}) do not answer: {exc}"
            ) from None
        except ServerException as exc:
            if exc.code != TOO_MANY_BYTES:
                raise
            raise ReportError(
                f"this report would read more than {limit / 2**30:.1f} GiB of flows on a "
                "ClickHouse server: narrow the time window, or drop per-flow filters (bytes, "
                "packets) and dimensions no rollup keeps"
            ) from None
        # The client reads every string as bytes (addresses are FixedString(16), bytes as in
        # Parquet); a Nullable(String) is an enrichment name as the dialect's keys return it,
        # text in Parquet: decoded here, in the few rows of an answer.
        text = [i for i, (_, kind) in enumerate(types) if kind == "Nullable(String)"]
        if text and rows:
            return [_decoded(row, text) for row in rows]
        return list(rows)

    def execute(self, statement: Statement) -> list[Row]:
        sql, params = bind(statement)
        return self.run(sql, params)

    def shared_source(self, files: list[str], flt: CompiledFilter) -> str | None:
        return None  # the server keeps its own caches

    def plan(
        self,
        data: Path,
        since: int,
        until: int,
        needs: frozenset[str],
        *,
        finest_bucket: int | None = None,
        use_rollups: bool = True,
    ) -> Plan:
        coverage = Coverage()
        if use_rollups and choose_table(needs) is not None and until - since >= HOUR_MS:
            coverage = self.coverage(since, until)
        return plan(
            since,
            until,
            needs,
            finest_bucket=finest_bucket,
            use_rollups=use_rollups,
            coverage=coverage,
        )

    def coverage(self, since: int, until: int) -> Coverage:
        """What the hour and day rollups hold of ``[since, until)`` now (two small queries
        over every shard)."""
        filled = f"SELECT max(done) FROM {self.database}.{schema.FILLED_TABLE}"  # noqa: S608
        done = int(self.run(filled)[0][0])
        if done <= since:
            return Coverage(done)
        lo = _floor(since, DAY_MS)
        stale = self.run(
            f"SELECT hour FROM {self.database}.{schema.TOUCHED}"  # noqa: S608
            " WHERE hour >= %(lo)s AND hour < %(hi)s GROUP BY hour HAVING max(touched) >= %(done)s",
            {"lo": lo, "hi": min(until, done), "done": done},
        )
        return Coverage(done, frozenset(int(hour) for (hour,) in stale))

    def table_status(self) -> list[tuple[str, int, int, int, int | None, int | None]]:
        """Per table: data parts (in place of files) and their bytes on all shards, rows,
        oldest and newest time."""
        tables = [("raw", schema.RAW, "time_received")]
        for resolution in ROLLUP_RESOLUTIONS:
            for table in ROLLUP_TABLES:
                name = schema.rollup_name(resolution, table.name)
                tables.append((f"{resolution}/{table.name}", name, "time"))
        counts = " UNION ALL ".join(
            f"SELECT {i} AS i, count() AS n, min({column}) AS lo, max({column}) AS hi "  # noqa: S608
            f"FROM {self.database}.{table}"
            for i, (_, table, column) in enumerate(tables)
        )
        held = {int(i): (int(n), int(lo), int(hi)) for i, n, lo, hi in self.run(counts)}
        parts = {
            bytes(table).decode(): (int(n), int(size))
            for table, n, size in self.run(
                "SELECT table, count(), sum(bytes_on_disk) FROM cluster(%(cluster)s, system.parts) "
                "WHERE database = %(database)s AND active GROUP BY table",
                {"cluster": self.cluster, "database": self.database},
            )
        }
        found = []
        for i, (label, name, _) in enumerate(tables):
            n, lo, hi = held.get(i, (0, 0, 0))
            files, size = parts.get(f"{name}_local", (0, 0))
            found.append((label, files, n, size, lo if n else None, hi if n else None))
        return found
