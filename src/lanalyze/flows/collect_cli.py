"""``lanalyze flows collect``, ``flows import`` and ``flows exporters``.

Kept out of :mod:`lanalyze.flows.cli` (which registers them) so the collector's commands and
the report commands are separate modules. Heavy imports happen inside the commands, so
``lanalyze --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

EXIT_CONFIG = 2
EXIT_START = 3


def _app_config(ctx: click.Context) -> Any:
    """The validated configuration of the root ``lanalyze`` command (``--config``)."""
    return ctx.find_root().obj.config


def _data_dir(ctx: click.Context, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir.expanduser()
    return Path(_app_config(ctx).general.data_path)


DATA_OPTION = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Data directory (default: general.data_dir of the configuration).",
)


@click.command("collect")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="ADDR[:PORT]",
    help="UDP address to receive on, repeatable; IPv6 in brackets; port 2055 when omitted "
    "(default: flows.listen of the configuration).",
)
@DATA_OPTION
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    help="Worker processes (default: flows.workers; 0: one per CPU core).",
)
@click.pass_context
def collect(
    ctx: click.Context, listen: tuple[str, ...], data_dir: Path | None, workers: int | None
) -> None:
    """Run the flow collector alone in the foreground until Ctrl-C or SIGTERM."""
    from lanalyze.errors import StartError
    from lanalyze.flows.collector import FlowCollector, with_default_port
    from lanalyze.log import setup_logging

    config = _app_config(ctx)
    flows_config = config.flows.model_copy(deep=True)
    try:
        if listen:
            flows_config.listen = [with_default_port(value) for value in listen]
        if workers is not None:
            flows_config.workers = workers
    except ValidationError as exc:
        messages = "; ".join(str(error["msg"]) for error in exc.errors())
        click.echo(f"lanalyze flows collect: --listen: {messages}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(config.general.log_format, config.general.log_level)
    collector = FlowCollector(flows_config, _data_dir(ctx, data_dir))
    from lanalyze.alarms.engine import run_with_alarms
    from lanalyze.flows.snmp import run_with_poller
    from lanalyze.flows.store import paths
    from lanalyze.flows.store.rollup import run_collector_with_rollups
    from lanalyze.instance import DataDirLock

    flow_dir = paths.flow_dir(_data_dir(ctx, data_dir))
    try:
        DataDirLock(_data_dir(ctx, data_dir)).acquire()
        main = run_collector_with_rollups(collector, flows_config.rollup, flow_dir)
        main = run_with_alarms(config, _data_dir(ctx, data_dir), main, collector)
        asyncio.run(run_with_poller(flows_config.snmp, flow_dir, main))
    except StartError as exc:
        click.echo(f"lanalyze flows collect: {exc}", err=True)
        sys.exit(EXIT_START)


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@DATA_OPTION
@click.pass_context
def import_pcaps(ctx: click.Context, files: tuple[Path, ...], data_dir: Path | None) -> None:
    """Decode the NetFlow/IPFIX in pcap or pcapng FILES (in order, one template cache) and
    store the flows, as if the collector had received them at capture time."""
    from lanalyze.flows.errors import PcapImportError
    from lanalyze.flows.importer import import_files
    from lanalyze.log import setup_logging

    config = _app_config(ctx)
    # The few bad-datagram lines the import logs (rate-limited) carry the peer and the reason
    # in their key=value fields: without the formatter they print as a bare event name.
    setup_logging(config.general.log_format, config.general.log_level)
    try:
        result = import_files(list(files), _data_dir(ctx, data_dir), config.flows)
    except PcapImportError as exc:
        click.echo(f"lanalyze flows import: {exc}", err=True)
        sys.exit(1)
    bad = f" ({result.summary()})" if result.reasons else ""
    click.echo(
        f"{result.datagrams} export packets, {result.flows} flows stored in "
        f"{result.segments} segments; {result.problems} decode problems{bad}"
    )
    if result.flows == 0:
        names = " ".join(str(f) for f in files)
        click.echo(
            f"lanalyze flows import: no NetFlow v5/v7/v9 or IPFIX export in {names}: this "
            "command reads captures of export traffic (collector-bound UDP). For flows made "
            "from the packets of an ordinary capture, replay it through softflowd to a "
            "collector: `lanalyze flows collect --listen 127.0.0.1:2055` and "
            f"`softflowd -r FILE.pcap -n 127.0.0.1:2055 -v 10` (one file at a time)",
            err=True,
        )
        sys.exit(1)


@click.command("exporters")
@DATA_OPTION
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.pass_context
def exporters(ctx: click.Context, data_dir: Path | None, output_format: str) -> None:
    """Exporters: the running (or last) collector's counters, and what the store holds of
    each (also those not heard from since the collector started)."""
    from lanalyze.flows.exporters import exporters_path
    from lanalyze.flows.query import reports
    from lanalyze.flows.query.reports.exporters import exporters_overview, format_table

    reports.apply_config(_app_config(ctx).flows.query, _app_config(ctx).flows.store)
    directory = _data_dir(ctx, data_dir)
    overview = exporters_overview(directory)
    if overview.collector is None and not overview.collector_missing:
        click.echo(f"lanalyze flows exporters: {overview.collector_problem}", err=True)
        sys.exit(1)
    if overview.collector_missing and not overview.rows:
        click.echo(
            f"no collector has run with data directory {directory} "
            f"({exporters_path(directory)} is absent) and no flows are stored",
            err=True,
        )
        if overview.stored.unread:
            click.echo(f"lanalyze flows exporters: {overview.stored.unread}", err=True)
        sys.exit(1)
    if output_format == "json":
        click.echo(json.dumps(overview.to_json(), indent=1))
    else:
        click.echo(format_table(overview), nl=False)
