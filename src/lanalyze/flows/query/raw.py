"""How a report reads raw segments: ``read_parquet`` of the planned files, by column name when
it needs a column some segments lack.

Segments may lack the enrichment columns (:data:`~lanalyze.flows.catalogue.ADDED_COLUMNS`):
written before they existed, or a name column left out because it was null in every row of
the segment (every segment when enrichment is not configured: :mod:`lanalyze.flows.store.
writer`). Both the reports' SQL (:mod:`.sql`) and the console's shared filtered flows
(:mod:`.filtered`) read through :func:`raw_reader`.

Trust: fixed text built from the catalogue's names; the file list stays a parameter.
"""

from __future__ import annotations

import re

from lanalyze.flows import catalogue

_ADDED = re.compile(r"\b(" + "|".join(sorted(catalogue.ADDED_COLUMNS)) + r")\b")
_DUCKDB_TYPES = {"u8": "UTINYINT", "u16": "USMALLINT", "u32": "UINTEGER", "u64": "UBIGINT"}
_ADDED_NULLS = "SELECT " + ", ".join(
    f"NULL::{_DUCKDB_TYPES.get(catalogue.BY_NAME[name].kind, 'VARCHAR')} AS {name}"
    for name in sorted(catalogue.ADDED_COLUMNS)
)


def raw_reader(sql: str, options: str = "") -> str:
    """``read_parquet(?)`` of raw segments (``options``: more of its arguments, fixed text).

    When ``sql`` reads a column segments may lack (:data:`~lanalyze.flows.catalogue.
    ADDED_COLUMNS`: written before it existed, or a name column left out because it was
    null in every row, which is every segment when enrichment is not configured), the files
    are read by column name, and an empty row of every such column is added by name, so a
    column none of the files has reads as null instead of failing to bind."""
    if _ADDED.search(sql):
        by_name = f"read_parquet(?{options}, union_by_name = true)"
        return f"(SELECT * FROM {by_name} UNION ALL BY NAME {_ADDED_NULLS} WHERE false)"  # noqa: S608
    return f"read_parquet(?{options})"
