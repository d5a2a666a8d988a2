"""The flow reports: top-N, time series, raw flow list, interface utilisation, store status.

One module per report (:mod:`.top`, :mod:`.series`, :mod:`.flowlist`, :mod:`.iface`,
:mod:`.status`, :mod:`.exporters`: the collector's counters merged with the stored totals),
each returning typed values: counters as ints, times as UTC milliseconds
(``to_json()`` gives the ISO 8601 shape the CLI and the JSON API print). A report plans its
files (:mod:`lanalyze.flows.query.planner`), has the backend's dialect build one statement of
``UNION ALL`` pieces (:mod:`lanalyze.flows.query.sql`; rollup parts hold sums already scaled
by sampling, raw flows are scaled there) and runs it (:mod:`lanalyze.flows.query.engine`).

Times are those the collector received the flows at (``time_received``, UTC ms), like
Akvorado: that is what the rollups bucket, so rollup and raw answers are the same. Every
value from the user is a SQL parameter; the SQL text is built from fixed fragments only.
"""

from __future__ import annotations

from lanalyze.flows.query.engine import apply_config
from lanalyze.flows.query.reports.common import MAX_ROWS, ORDERS, Sums
from lanalyze.flows.query.reports.flowlist import LIST_COLUMNS, FlowRecord, list_flows
from lanalyze.flows.query.reports.iface import (
    InterfacePoint,
    InterfaceRow,
    InterfaceSeries,
    interface_series,
    top_interfaces,
)
from lanalyze.flows.query.reports.series import SeriesPoint, SeriesReport, series
from lanalyze.flows.query.reports.status import TableStatus, status
from lanalyze.flows.query.reports.top import TopReport, TopRow, top

__all__ = [
    "LIST_COLUMNS",
    "MAX_ROWS",
    "ORDERS",
    "FlowRecord",
    "InterfacePoint",
    "InterfaceRow",
    "InterfaceSeries",
    "SeriesPoint",
    "SeriesReport",
    "Sums",
    "TableStatus",
    "TopReport",
    "TopRow",
    "apply_config",
    "interface_series",
    "list_flows",
    "series",
    "status",
    "top",
    "top_interfaces",
]
