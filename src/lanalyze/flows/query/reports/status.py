"""Store status: per stored table the files, rows, bytes on disk and time range held."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanalyze.flows.errors import Replan
from lanalyze.flows.query import engine
from lanalyze.flows.query.reports.common import (
    RESOLUTIONS,
    ROLLUP_TABLES,
    list_raw_files,
    list_raw_hours,
    part_path,
    raw_dir,
    read_manifest,
)
from lanalyze.flows.query.timespec import iso


@dataclass
class TableStatus:
    table: str
    files: int
    rows: int = 0
    bytes: int = 0
    first: int | None = None
    """Oldest time held, UTC ms (None: nothing)."""
    last: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "files": self.files,
            "rows": self.rows,
            "bytes": self.bytes,
            "first": None if self.first is None else iso(self.first),
            "last": None if self.last is None else iso(self.last),
        }


def status(data: Path) -> list[TableStatus]:
    """Per stored table: files, rows, bytes on disk and the time range held."""
    backend = engine.backend()
    if not backend.files:
        # A server's tables (ClickHouse: data parts instead of files).
        return [TableStatus(*row) for row in backend.table_status()]
    tables: list[TableStatus] = []
    raw_files = [
        str(raw_dir(data) / hour / name)
        for hour in list_raw_hours(data)
        for name in list_raw_files(data, hour)
    ]
    tables.append(_table_status("raw", raw_files, "time_received"))
    manifest = read_manifest(data)
    for resolution in RESOLUTIONS:
        for table in ROLLUP_TABLES:
            keyed = manifest.parts.get(resolution, {}).get(table.name, {})
            files = [
                str(part_path(data, resolution, table.name, key, name))
                for key, names in keyed.items()
                for name in names
            ]
            tables.append(_table_status(f"{resolution}/{table.name}", files, "time"))
    return tables


def _table_status(name: str, files: list[str], time_column: str) -> TableStatus:
    entry = TableStatus(name, len(files))
    existing = [f for f in files if Path(f).exists()]
    if not existing:
        return entry
    entry.bytes = sum(Path(f).stat().st_size for f in existing)
    backend = engine.backend()
    try:
        rows = backend.execute(backend.dialect.time_range(existing, time_column))
    except (Replan, engine.ReadError):
        return entry
    if rows and rows[0][0] is not None:
        entry.rows = int(rows[0][0])
        entry.first = int(rows[0][1]) if rows[0][1] is not None else None
        entry.last = int(rows[0][2]) if rows[0][2] is not None else None
    return entry
