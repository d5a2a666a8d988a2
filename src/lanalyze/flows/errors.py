"""The flow side's errors, and whose fault each is.

User input to a report (the operator or a console user typed it; shown to them, never
logged as a fault of ours) -- all :class:`ReportInputError`, a :class:`ValueError`:

- :class:`FilterError`: a malformed filter, with a caret under the mistake;
- :class:`TimeError`: a time or duration that cannot be understood;
- :class:`DimensionError`: an unknown or malformed ``--by`` dimension;
- :class:`ReportError`: a request that cannot be answered as asked (order, limit, exporter,
  more raw flows than ``flows.query`` lets one report scan).

Files the operator hands us: :class:`PcapError` (a capture's bytes are unreadable or
truncated: the file's fault) and :class:`PcapImportError` (``flows import`` cannot read a
file as a capture; names it).

The operator's ClickHouse database: :class:`SchemaMismatch` (a table of ours exists there with
other columns or engine than this version creates; the collector refuses to start, naming it).

Peers: :class:`PollFailed` (an SNMP agent did not answer or answered nonsense; counted and
logged by reason, its last answers kept). An exporter's bad bytes are
:class:`lanalyze.flows.decode.errors.PeerDataError`, local to the sans-IO decoders.

Ours: :class:`Replan` is control flow, not a fault: a file the plan named was deleted under a
running query (compaction, retention), and the report plans again.
"""

from __future__ import annotations

from typing import Literal


class ReportInputError(ValueError):
    """A report request the user must correct; the message says what is wrong."""


class FilterError(ReportInputError):
    """A malformed filter: the message, and the filter with a caret under the mistake."""

    def __init__(self, message: str, text: str, column: int) -> None:
        self.message = message
        self.text = text
        self.column = max(0, min(column, len(text)))
        super().__init__(self.render())

    def render(self) -> str:
        return f"filter error: {self.message}\n  {self.text}\n  {' ' * self.column}^"


class TimeError(ReportInputError):
    """A time or duration that cannot be understood."""


class DimensionError(ReportInputError):
    """An unknown or malformed ``--by`` dimension."""


class ReportError(ReportInputError):
    """A report request that cannot be answered as asked (bad order, limit, exporter...)."""


class Replan(Exception):
    """A planned file went away before it was read: plan again."""


class PcapError(Exception):
    """The capture file is unreadable or truncated; the message names the file and offset."""


class PcapImportError(Exception):
    """A file cannot be read as a capture; the message names it."""


class SchemaMismatch(Exception):
    """ClickHouse tables differ from the schema this version generates
    (``lanalyze flows schema --backend clickhouse``); the message names server, table and
    column."""


class PollFailed(Exception):
    """An SNMP agent's round failed; ``reason`` is the metric label, the message the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


Fault = Literal["client", "server"]


class ProtocolError(Exception):
    """The report socket's bytes broke its protocol (``flows/query/reportproto.py``);
    ``fault`` says whose fault it is: the client's request or the server's answer."""

    def __init__(self, fault: Fault, message: str) -> None:
        super().__init__(message)
        self.fault: Fault = fault
