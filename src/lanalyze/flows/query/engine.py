"""Runs the reports' statements: DuckDB connections, the raw-scan budget, re-planning.

The reports (:mod:`lanalyze.flows.query.reports`) build their SQL with the backend's
:class:`~lanalyze.flows.query.sql.Dialect` and hand it here. The default backend is DuckDB
in this process over the Parquet files: one in-memory connection per thread (a connection is not
shared across threads), ``threads`` worker threads each (the machine is shared with the
collector). The other is a ClickHouse cluster (:mod:`~lanalyze.flows.query.clickhouse`), chosen by
``[flows.store] backend`` (:func:`apply_config`) or :func:`use`: its plans name tables, not
files (``Backend.files`` is False).

A report plans its files first and reads them after; compaction or retention may delete a
file in between (they wait a grace period, but a report may be slow). Such a read raises
:class:`Replan` and :func:`with_replan` plans the report again, twice at most.

Input: statements come from :mod:`~lanalyze.flows.query.sql` (values as parameters); the
files are ours.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

try:
    # DuckDB's C extension itself, which the `duckdb` package re-exports: its __init__ adds
    # the Python relational and expression API (~100 ms of imports, more than the extension)
    # that reports never use, and a report command pays every import (docs/performance.md).
    import _duckdb as duckdb
except ImportError:  # a DuckDB build that names it otherwise
    import duckdb  # type: ignore[no-redef]

from lanalyze.configpath import QUERY_DEFAULTS
from lanalyze.flows.errors import Replan, ReportError
from lanalyze.flows.query import planner
from lanalyze.flows.query.compile import CompiledFilter
from lanalyze.flows.query.planner import Plan
from lanalyze.flows.query.sql import Dialect, DuckDB, Statement

ReadError = duckdb.IOException
"""DuckDB's error for a file it could not read (one left between planning and reading)."""

if TYPE_CHECKING:
    # Not at run time: the report commands run with the built-in defaults below when no
    # configuration file exists, and pydantic and the section models cost more than the query.
    from lanalyze.flows.config import QueryConfig, StoreConfig

T = TypeVar("T")
Row = tuple[Any, ...]


TableStatusRow = tuple[str, int, int, int, int | None, int | None]
"""A stored table's name, files (or parts), rows, bytes, oldest and newest time (UTC ms)."""


class Backend(Protocol):
    dialect: Dialect
    files: bool
    """True: plans list Parquet files (the embedded store); False: they name server tables."""

    def execute(self, statement: Statement) -> list[Row]: ...

    def shared_source(self, files: list[str], flt: CompiledFilter) -> str | None: ...

    def plan(
        self,
        data: Path,
        since: int,
        until: int,
        needs: frozenset[str],
        *,
        finest_bucket: int | None = None,
        use_rollups: bool = True,
    ) -> Plan: ...

    def table_status(self) -> list[TableStatusRow]:
        """Per stored table its status (a backend without files; the embedded store's
        status reads the files' footers itself)."""
        ...


class QueryLimits(Protocol):
    """What running a statement reads of ``[flows.query]``."""

    threads: int
    max_raw_bytes: int


class _Defaults:
    """``[flows.query]``'s defaults without pydantic (:data:`QUERY_DEFAULTS` owns them)."""

    threads = QUERY_DEFAULTS["threads"]
    max_raw_bytes = QUERY_DEFAULTS["max_raw_bytes"]


_settings: dict[str, QueryLimits] = {"query": _Defaults()}


def apply_config(config: QueryConfig, store: StoreConfig | None = None) -> None:
    """The ``[flows.query]`` section this process answers reports with: DuckDB threads per
    query (the machine is shared with the collector) and the raw bytes one report may scan;
    and with ``store`` (``[flows.store]``) the backend: the embedded store, or the ClickHouse
    cluster it names. Applied by whoever answers reports (``flows/query/cli.py``,
    ``serve.py`` for the console); the section's defaults until then."""
    from lanalyze.flows.query import names

    _settings["query"] = config
    names.configure(config.names)  # reverse DNS names of --resolve and the console
    if store is None:
        return
    current = _backend[0]
    if store.backend == "clickhouse":
        from lanalyze.flows.query.clickhouse import ClickHouseBackend

        if not (isinstance(current, ClickHouseBackend) and current.store == store):
            use(ClickHouseBackend(store))
            if isinstance(current, ClickHouseBackend):
                current.close()
    else:
        _use_embedded()


def apply_defaults() -> None:
    """:func:`apply_config` of the built-in ``[flows.query]`` and ``[flows.store]``, without
    building their models: what a report command does when there is no configuration file
    (pydantic and the section models would cost it more than the query)."""
    _settings["query"] = _Defaults()
    names = sys.modules.get("lanalyze.flows.query.names")
    if names is not None:  # not imported: it starts with the defaults anyway
        names.reset()
    _use_embedded()


def _use_embedded() -> None:
    current = _backend[0]
    if not current.files:
        use(_embedded)
        close = getattr(current, "close", None)
        if close is not None:
            close()


def max_raw_bytes() -> int:
    return _settings["query"].max_raw_bytes


class DuckDBBackend:
    """In-process DuckDB: ``read_parquet`` over the planned files."""

    dialect: Dialect = DuckDB()
    files = True

    def __init__(self) -> None:
        self._local = threading.local()

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
        return planner.plan(
            data, since, until, needs, finest_bucket=finest_bucket, use_rollups=use_rollups
        )

    def table_status(self) -> list[TableStatusRow]:
        return []  # reports/status.py reads the files' footers

    def connection(self) -> duckdb.DuckDBPyConnection:
        threads = _settings["query"].threads
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or getattr(local, "threads", None) != threads:
            # The object cache keeps Parquet footers between queries: a page's reports read
            # the same rollup parts, and parts are immutable under their final names.
            connection = duckdb.connect(
                ":memory:", config={"threads": threads, "enable_object_cache": True}
            )
            local.connection = connection
            local.threads = threads
        return connection

    def execute(self, statement: Statement) -> list[Row]:
        try:
            return self.connection().execute(statement.sql, statement.params).fetchall()
        except ReadError as exc:
            # A file left between planning and reading (compaction, retention): re-plan.
            raise Replan(str(exc)) from None
        finally:
            self._unregister()

    def shared_source(self, files: list[str], flt: CompiledFilter) -> str | None:
        """Register the filtered flows of ``files`` on this thread's connection (None: too
        many to keep, read the files instead); unregistered after the next execute."""
        connection = self.connection()
        from lanalyze.flows.query import filtered  # pyarrow: only the console's drill-downs

        try:
            table = filtered.flows(connection, files, flt)
        except ReadError as exc:
            raise Replan(str(exc)) from None
        if table is None:
            return None
        names: list[str] = self._local.__dict__.setdefault("registered", [])
        name = f"filtered_flows_{len(names)}"
        connection.register(name, table)
        names.append(name)
        return name

    def _unregister(self) -> None:
        names: list[str] = self._local.__dict__.get("registered", [])
        connection = getattr(self._local, "connection", None)
        while names:
            name = names.pop()
            if connection is not None:
                connection.unregister(name)


_embedded = DuckDBBackend()
_backend: list[Backend] = [_embedded]


def backend() -> Backend:
    return _backend[0]


def use(chosen: Backend) -> None:
    """Answer the reports with ``chosen`` from now on (tests, a second backend)."""
    _backend[0] = chosen


def execute(statement: Statement) -> list[Row]:
    return backend().execute(statement)


def plan(
    data: Path,
    since: int,
    until: int,
    needs: frozenset[str],
    *,
    finest_bucket: int | None = None,
    use_rollups: bool = True,
) -> Plan:
    """The current backend's plan of a report needing ``needs`` over ``[since, until)``."""
    return backend().plan(
        data, since, until, needs, finest_bucket=finest_bucket, use_rollups=use_rollups
    )


def check_raw_size(plans: list[Plan]) -> None:
    """Refuse a report that would scan more raw flows than allowed (a per-flow filter such
    as ``bytes > 1M`` over weeks), instead of holding a worker thread for minutes."""
    limit = _settings["query"].max_raw_bytes
    files = {f for p in plans for piece in p.pieces if piece.source == "raw" for f in piece.files}
    total = 0
    for name in files:
        with contextlib.suppress(OSError):
            total += os.stat(name).st_size
        if total > limit:
            raise ReportError(
                f"this report would scan more than {limit / 2**30:.0f} GiB of raw flows: "
                "narrow the time window, or drop per-flow filters (bytes, packets) and "
                "dimensions no rollup keeps"
            )


def with_replan(run: Callable[[], T]) -> T:
    """``run()``, planned and run again (twice at most) when the store changed under it."""
    for _ in range(2):
        try:
            return run()
        except Replan:
            continue
    try:
        return run()
    except Replan as exc:
        raise ReportError(f"the store changed while it was read, try again: {exc}") from None
