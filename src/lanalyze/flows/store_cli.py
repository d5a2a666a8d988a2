"""``lanalyze flows schema`` and ``lanalyze flows export``: the store's schema and migration.

Heavy imports happen inside the commands (``lanalyze --help`` stays fast).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lanalyze.flows.collect_cli import DATA_OPTION, EXIT_CONFIG, EXIT_START, _app_config, _data_dir


@click.command("schema")
@click.option(
    "--backend",
    type=click.Choice(["parquet", "clickhouse"]),
    help="Whose schema to print (default: flows.store.backend).",
)
@click.pass_context
def schema(ctx: click.Context, backend: str | None) -> None:
    """Print the flow store's schema: the ClickHouse DDL (run on every server) or the Parquet
    columns."""
    config = _app_config(ctx)
    backend = backend or config.flows.store.backend
    if backend == "clickhouse":
        from lanalyze.flows.store.clickhouse.schema import ddl

        store = config.flows.store
        click.echo(ddl(store.database, store.cluster), nl=False)
        return
    from lanalyze.flows.catalogue import arrow_schema

    click.echo(arrow_schema().to_string(show_schema_metadata=False))


@click.command("export")
@click.option(
    "--to",
    "target",
    type=click.Choice(["clickhouse"]),
    required=True,
    help="Where to: the ClickHouse cluster of [flows.store] (its backend setting need not "
    "be clickhouse yet).",
)
@DATA_OPTION
@click.pass_context
def export(ctx: click.Context, target: str, data_dir: Path | None) -> None:
    """Copy the embedded store's raw flows into ClickHouse (the rollups are rebuilt there).

    Safe to run again after an interruption: batches already stored are skipped."""
    from lanalyze.flows.errors import ExportFailed, SchemaMismatch
    from lanalyze.flows.store.clickhouse.export import export as run_export
    from lanalyze.flows.store.paths import flow_dir

    config = _app_config(ctx)
    flows = flow_dir(_data_dir(ctx, data_dir))
    if not flows.is_dir():
        click.echo(f"lanalyze flows export: no flow store in {flows}", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        result = run_export(flows, config.flows)
    except SchemaMismatch as exc:
        click.echo(f"lanalyze flows export: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except ExportFailed as exc:
        click.echo(f"lanalyze flows export: {exc}", err=True)
        sys.exit(EXIT_START)
    click.echo(
        f"exported {result.files} files: {result.rows} flows inserted, "
        f"{result.present} already stored"
    )
    for path in result.unreadable:
        click.echo(f"unreadable, skipped: {path}", err=True)
    if result.unreadable:
        sys.exit(1)
