"""Migrate an embedded store into ClickHouse: ``lanalyze flows export --to clickhouse``.

Every raw Parquet segment of ``<data_dir>/flows/raw`` (hour by hour, the files a compacted
file replaces left out, as the readers do) is read in row batches of at most
:data:`~.writer.MAX_INSERT_ROWS` and inserted through the collector's own writer
(:class:`~.writer.ClickHouseWriter`), under a batch id derived from the file's name and the
batch's number. The writer asks the cluster before each insert whether that batch id is
already stored, so an export that was interrupted (or run twice) continues where it stopped
and never stores a flow twice. Rollups are not copied: ClickHouse's materialized views build
the minute rollups from the inserted flows, and one maintainer pass at the end (the
collector's, :meth:`~.maintain.ClickHouseMaintainer.fill`) the hour and day ones; the raw
segments hold everything the rollups do (what raw retention had already deleted is gone from
the raw files, and so from the export).

Trust: the files are our own collector's (catalogue schema); one that cannot be read is
counted, named and skipped. The cluster's schema is checked (and completed) first, as at a
collector's start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lanalyze.flows.catalogue import arrow_schema, conform
from lanalyze.flows.config import FlowsConfig
from lanalyze.flows.errors import ExportFailed
from lanalyze.flows.store.clickhouse.maintain import ClickHouseMaintainer
from lanalyze.flows.store.clickhouse.spool import Spool
from lanalyze.flows.store.clickhouse.writer import MAX_INSERT_ROWS, ClickHouseWriter
from lanalyze.flows.store.layout import list_raw_files, list_raw_hours
from lanalyze.flows.store.paths import hour_dir
from lanalyze.log import get_logger

log = get_logger(__name__)


@dataclass
class ExportResult:
    files: int = 0
    rows: int = 0
    """Rows inserted by this run."""
    present: int = 0
    """Rows found already stored (an earlier, interrupted run)."""
    unreadable: list[str] = field(default_factory=list)


def batch_id_of(hour: str, name: str, index: int) -> int:
    """The batch id of a file's ``index``-th batch: the same on every run, never 0."""
    digest = hashlib.blake2b(f"{hour}/{name}#{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def export(
    flows: Path,
    config: FlowsConfig,
    *,
    progress: Callable[[str, int], None] | None = None,
    batch_rows: int = MAX_INSERT_ROWS,
) -> ExportResult:
    """Insert every raw segment under the flow directory ``flows`` into ClickHouse."""
    upkeep = ClickHouseMaintainer(config.store, config.rollup)
    if not upkeep.ensure():
        raise ExportFailed(
            f"cannot reach every server of flows.store.servers: {config.store.servers}"
        )
    writer = ClickHouseWriter(config.store, "export", Spool(flows / ".export-unused", 0))
    result = ExportResult()
    schema = arrow_schema()
    try:
        for hour in list_raw_hours(flows):
            for name in list_raw_files(flows, hour):
                path = hour_dir(flows, hour) / name
                try:
                    parquet = pq.ParquetFile(path)
                    # A segment leaves out the name columns that are null in every row (and
                    # an older one lacks them): conform() adds them back, null.
                    present = set(parquet.schema_arrow.names)
                    columns = [name for name in schema.names if name in present]
                    batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
                    for index, batch in enumerate(batches):
                        table = conform(pa.Table.from_batches([batch])).cast(schema)
                        outcome = writer.insert_once(table, batch_id_of(hour, name, index))
                        if outcome is None:
                            raise ExportFailed(
                                f"ClickHouse failed while exporting {path}; run the export "
                                "again to continue (stored batches are skipped)"
                            )
                        if outcome == "inserted":
                            result.rows += table.num_rows
                        else:
                            result.present += table.num_rows
                except (OSError, pa.ArrowException) as exc:
                    log.error(
                        "flows.export_unreadable", extra={"file": str(path), "error": str(exc)}
                    )
                    result.unreadable.append(str(path))
                    continue
                result.files += 1
                if progress is not None:
                    progress(str(path), result.rows)
    finally:
        writer.close()
    if config.store.fill_rollups and upkeep.fill() is None:
        raise ExportFailed(
            "the flows are stored; filling the hour and day rollups failed (the collector's "
            "maintainer does it at its next round)"
        )
    return result
