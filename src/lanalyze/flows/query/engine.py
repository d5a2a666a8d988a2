"""Runs the reports' statements: DuckDB connections, the raw-scan budget, re-planning.

The reports (:mod:`lanalyze.flows.query.reports`) build their SQL with the backend's
:class:`~lanalyze.flows.query.sql.Dialect` and hand it here. One backend today, DuckDB in
this process over the Parquet files: one in-memory connection per thread (a connection is not
shared across threads), ``threads`` worker threads each (the machine is shared with the
collector). A second backend (ClickHouse) would implement :class:`Backend` and be chosen with
:func:`use`.

A report plans its files first and reads them after; compaction or retention may delete a
file in between (they wait a grace period, but a report may be slow). Such a read raises
:class:`Replan` and :func:`with_replan` plans the report again, twice at most.

Input: statements come from :mod:`~lanalyze.flows.query.sql` (values as parameters); the
files are ours.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import duckdb

from lanalyze.flows.config import QueryConfig
from lanalyze.flows.errors import Replan, ReportError
from lanalyze.flows.query import filtered
from lanalyze.flows.query.compile import CompiledFilter
from lanalyze.flows.query.planner import Plan
from lanalyze.flows.query.sql import Dialect, DuckDB, Statement

T = TypeVar("T")
Row = tuple[Any, ...]


class Backend(Protocol):
    dialect: Dialect

    def execute(self, statement: Statement) -> list[Row]: ...

    def shared_source(self, files: list[str], flt: CompiledFilter) -> str | None: ...


_settings = {"query": QueryConfig()}


def apply_config(config: QueryConfig) -> None:
    """The ``[flows.query]`` section this process answers reports with: DuckDB threads per
    query (the machine is shared with the collector) and the raw bytes one report may scan.
    Applied by whoever answers reports (``flows/query/cli.py``, ``serve.py`` for the console);
    the section's defaults until then. Its ``names`` sub-section configures the reverse DNS
    names of ``--resolve`` and the console (:mod:`lanalyze.flows.query.names`)."""
    from lanalyze.flows.query import names

    _settings["query"] = config
    names.configure(config.names)


def max_raw_bytes() -> int:
    return _settings["query"].max_raw_bytes


class DuckDBBackend:
    """In-process DuckDB: ``read_parquet`` over the planned files."""

    dialect: Dialect = DuckDB()

    def __init__(self) -> None:
        self._local = threading.local()

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
        except duckdb.IOException as exc:
            # A file left between planning and reading (compaction, retention): re-plan.
            raise Replan(str(exc)) from None
        finally:
            self._unregister()

    def shared_source(self, files: list[str], flt: CompiledFilter) -> str | None:
        """Register the filtered flows of ``files`` on this thread's connection (None: too
        many to keep, read the files instead); unregistered after the next execute."""
        connection = self.connection()
        try:
            table = filtered.flows(connection, files, flt)
        except duckdb.IOException as exc:
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


_backend: list[Backend] = [DuckDBBackend()]


def backend() -> Backend:
    return _backend[0]


def use(chosen: Backend) -> None:
    """Answer the reports with ``chosen`` from now on (tests, a second backend)."""
    _backend[0] = chosen


def execute(statement: Statement) -> list[Row]:
    return backend().execute(statement)


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
