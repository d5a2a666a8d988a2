"""Filter tree -> parameterised SQL (DuckDB ``?`` placeholders).

The SQL text is assembled only from column names of a fixed table (:data:`COLUMN_SQL`),
operators from a fixed table, parentheses and ``?``; every value the user typed travels as a
parameter. The compiled filter also says which stored columns it reads, so the query planner
knows which rollup tables can answer it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lanalyze.flows import catalogue

if TYPE_CHECKING:
    # Imported when a filter is parsed: a report without one (most command-line reports)
    # does not pay for the parser's module, whose node dataclasses are costly to create.
    from lanalyze.flows.query.filterlang import Node

# Filter column -> (SQL expression, stored columns it needs). Counters compare scaled by
# sampling, like the reports show them; they are per-flow values, so only raw flows have them.
COLUMN_SQL: dict[str, tuple[str, frozenset[str]]] = {
    name: (name, frozenset({name}))
    for name in (
        "src_addr",
        "dst_addr",
        "src_port",
        "dst_port",
        "protocol",
        "tos",
        "tcp_flags",
        "src_as",
        "dst_as",
        "in_if",
        "out_if",
        "ip_version",
        "exporter",
        "icmp_type",
        "icmp_code",
        # The enrichment names (text, compared for equality).
        *(c.name for c in catalogue.COLUMNS if c.kind == "str" and c.dimension),
    )
}
COLUMN_SQL["bytes"] = ("(bytes * sampling_rate)", frozenset({"bytes", "sampling_rate", "@raw"}))
COLUMN_SQL["packets"] = (
    "(packets * sampling_rate)",
    frozenset({"packets", "sampling_rate", "@raw"}),
)
COLUMN_SQL["flows"] = ("flows", frozenset({"flows", "@raw"}))

_SQL_OPERATORS = {">", "<", "=", ">=", "<=", "<>"}


@dataclass(frozen=True)
class CompiledFilter:
    sql: str
    params: tuple[object, ...]
    columns: frozenset[str]
    """Stored columns the filter reads; ``@raw`` if only raw flows can answer it."""

    @property
    def is_true(self) -> bool:
        return self.sql == "TRUE"


EVERYTHING = CompiledFilter("TRUE", (), frozenset())
"""What no filter (None or ``""``) compiles to: ``compile_tree(parse(""))``."""


def compile_filter(text: str | None) -> CompiledFilter:
    """Parse and compile a filter (None or blank: everything). Raises FilterError."""
    if not text:
        return EVERYTHING
    from lanalyze.flows.query.filterlang import parse

    return compile_tree(parse(text))


def compile_tree(node: Node) -> CompiledFilter:
    params: list[object] = []
    columns: set[str] = set()
    sql = _compile(node, params, columns)
    return CompiledFilter(sql, tuple(params), frozenset(columns))


def _column(name: str, columns: set[str]) -> str:
    expression, needs = COLUMN_SQL[name]
    columns.update(needs)
    return expression


def _compile(node: Node, params: list[object], columns: set[str]) -> str:
    from lanalyze.flows.query.filterlang import (
        AddrRange,
        And,
        Any_,
        Compare,
        FlagsAll,
        Not,
        Or,
        TextEquals,
    )

    if isinstance(node, Any_):
        return "TRUE"
    if isinstance(node, Compare):
        assert node.op in _SQL_OPERATORS
        parts = []
        for name in node.columns:
            parts.append(f"{_column(name, columns)} {node.op} ?")
            params.append(node.value)
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    if isinstance(node, AddrRange):
        parts = []
        for name in node.columns:
            column = _column(name, columns)
            if node.low == node.high:
                parts.append(f"{column} = ?")
                params.append(node.low)
            else:
                parts.append(f"{column} BETWEEN ? AND ?")
                params.extend((node.low, node.high))
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    if isinstance(node, TextEquals):
        # Unknown names are null: compared as "" so that ``not net name office`` keeps them.
        parts = []
        for name in node.columns:
            parts.append(f"coalesce({_column(name, columns)}, '') = ?")
            params.append(node.value)
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    if isinstance(node, FlagsAll):
        column = _column("tcp_flags", columns)
        params.extend((node.mask, node.mask))
        return f"({column} & ?) = ?"
    if isinstance(node, Not):
        return f"(NOT {_compile(node.item, params, columns)})"
    if isinstance(node, And):
        return "(" + " AND ".join(_compile(item, params, columns) for item in node.items) + ")"
    if isinstance(node, Or):
        return "(" + " OR ".join(_compile(item, params, columns) for item in node.items) + ")"
    raise AssertionError(f"unknown filter node {node!r}")
