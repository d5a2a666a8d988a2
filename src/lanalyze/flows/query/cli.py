"""``lanalyze flows top | series | list | interfaces | status``: the reports on the command line.

Registered by :mod:`lanalyze.flows.cli`. A bad request (filter, dimension, time) prints the
message (a filter error with its caret line) and exits with status 2; a flow directory that
does not exist is named and exits with status 1. A report with no rows says on stderr what it
read: a store holding no flows at all, or no flows in the window (and filter).

Each command first asks a running ``lanalyze serve`` over its data directory's socket
(:mod:`.reportclient`; not with ``--no-server``), which runs this same command with its warm
query engine and hands back what it printed; when none answers, the command runs here. The
module imports only click at the top: the report engine is imported when a command runs
in-process. Everything a command prints goes through :func:`echo`, so the served and the
in-process answers are the same bytes.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import click

EXIT_USAGE = 2
EXIT_NO_DATA = 1
F = TypeVar("F", bound=Callable[..., Any])

# While the report server runs a command for a client, what it prints is gathered here
# (stderr?, text) instead of written: the client prints it, so both paths print the same bytes.
captured: ContextVar[list[tuple[bool, str]] | None] = ContextVar("captured", default=None)


def echo(message: str = "", *, nl: bool = True, err: bool = False) -> None:
    sink = captured.get()
    if sink is None:
        click.echo(message, nl=nl, err=err)
    else:
        sink.append((err, f"{message}\n" if nl else message))


def flow_dir_of(data: Path) -> Path:
    """``--data`` names a flow directory, or a data directory holding ``flows/``."""
    from lanalyze.flows.store.paths import flow_dir, raw_dir

    if not raw_dir(data).is_dir() and flow_dir(data).is_dir():
        return flow_dir(data)
    return data


def resolve_data(ctx: click.Context, data: Path | None) -> Path:
    """The flow directory: ``--data`` (a flow directory, or a data directory holding
    ``flows/``), else ``general.data_dir``/flows of the configuration. Every report command
    comes here first, so it also applies the ``[flows.query]`` section.

    Without a configuration file the built-in defaults apply, and they need no validation:
    the command then never loads the configuration models (pydantic), which cost more than
    the report (docs/performance.md, "Reports from the command line")."""
    from lanalyze.flows.query import engine
    from lanalyze.flows.store.paths import flow_dir

    app = ctx.find_root().obj
    if getattr(app, "defaults_only", False):
        from lanalyze.configpath import DEFAULT_DATA_DIR

        engine.apply_defaults()
        data_dir = DEFAULT_DATA_DIR.expanduser()
    else:
        config = app.config
        engine.apply_config(config.flows.query, config.flows.store)
        data_dir = config.general.data_path
    if data is None:
        directory = flow_dir(Path(data_dir))
        origin = "general.data_dir"
    else:
        directory = flow_dir_of(data.expanduser())
        origin = "--data"
    if not directory.is_dir():
        # An empty table here would look like "no traffic", not "wrong directory".
        echo(
            f"lanalyze flows {ctx.info_name}: no flow data: {directory} ({origin}) does not exist",
            err=True,
        )
        sys.exit(EXIT_NO_DATA)
    return directory


def say_if_empty(directory: Path, rows: int, filter_text: str | None = None) -> None:
    """On stderr, when a report has no rows: whether the store holds no flows at all (nothing
    collected or imported into it yet) or only none in the window (and filter). stdout keeps
    the (empty) table, CSV or JSON, so scripts parse it as before."""
    from lanalyze.flows.store.paths import raw_dir, rollup_dir

    if rows:
        return
    stored = next(raw_dir(directory).glob("*/*.parquet"), None) or next(
        rollup_dir(directory).glob("*/*/*/*.parquet"), None
    )
    if stored is None:
        echo(
            f"{directory} holds no flows (no segment under {raw_dir(directory)}): nothing has "
            "been collected into it (lanalyze flows collect) or imported (lanalyze flows "
            "import)",
            err=True,
        )
    else:
        which = f" matching the filter {filter_text!r}" if filter_text else ""
        echo(f"no flows in this window{which} in {directory}", err=True)


def _common(command: F) -> F:
    options = [
        click.option("--since", default=None, help="Start: ISO 8601 or relative (-1h, -30d)."),
        click.option("--until", default=None, help="End (default: now)."),
        click.option("--filter", "filter_text", default=None, help="nfdump-style filter."),
        click.option(
            "--data",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Flow data directory (default: general.data_dir/flows).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _format_option(command: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["table", "csv", "json"]),
        default="table",
        show_default=True,
    )(command)


def _resolve_option(command: F) -> F:
    return click.option(
        "--resolve",
        is_flag=True,
        help="Show reverse DNS names of addresses (flows.query.names; unresolved ones stay "
        "addresses). CSV and JSON keep the address and add COLUMN_name.",
    )(command)


def add_names(rows: list[dict[str, Any]], columns: list[str], output_format: str) -> list[str]:
    """Names of the address columns' values, found within ``cli_budget`` seconds
    (:func:`lanalyze.flows.query.names.add_names`): a table shows the name in place of the
    address (the address when unresolved, like tools without ``-n``); CSV and JSON keep the
    address and get ``COLUMN_name`` beside it. Returns the columns to print."""
    from lanalyze.flows.query import names

    budget = names.shared().config.cli_budget
    return names.add_names(rows, columns, budget, in_place=output_format == "table")


def _served(command: F) -> F:
    """Ask the running server first (:mod:`.reportclient`); run here when none answers."""

    @functools.wraps(command)
    def wrapper(*args: Any, no_server: bool, **kwargs: Any) -> Any:
        if not no_server:
            from lanalyze.flows.query.reportclient import ask

            answer = ask(click.get_current_context(), kwargs)
            if answer is not None:
                click.echo(answer.stdout, nl=False)
                click.echo(answer.stderr, nl=False, err=True)
                sys.exit(answer.exit)
        return command(*args, **kwargs)

    return click.option(
        "--no-server",
        is_flag=True,
        help="Run the query in this process, without asking a running `lanalyze serve`.",
    )(wrapper)  # type: ignore[return-value]


def _report_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValueError as exc:
            echo(str(exc), err=True)
            sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def _window(since: str | None, until: str | None) -> tuple[int, int]:
    from lanalyze.flows.query.timespec import window

    return window(since, until)


@click.command("top")
@click.option("--by", required=True, help="Dimensions, comma-separated (srcip, app, srcnet/24...).")
@click.option(
    "--order", type=click.Choice(["bytes", "packets", "flows"]), default="bytes", show_default=True
)
@click.option("-n", "limit", type=int, default=10, show_default=True, help="Rows (0: all).")
@click.option("--raw", is_flag=True, help="Read raw flows only, not the rollups.")
@_common
@_format_option
@_resolve_option
@_served
@click.pass_context
@_report_errors
def top(
    ctx: click.Context,
    *,
    by: str,
    order: str,
    limit: int,
    raw: bool,
    resolve: bool,
    since: str | None,
    until: str | None,
    filter_text: str | None,
    data: Path | None,
    output_format: str,
) -> None:
    """Top N values of one or more dimensions by bytes, packets or flows."""
    from lanalyze.flows.query import render, reports
    from lanalyze.flows.query.timespec import iso

    start, end = _window(since, until)
    directory = resolve_data(ctx, data)
    report = reports.top(
        directory,
        by,
        since=start,
        until=end,
        order=order,
        limit=limit,
        filter=filter_text,
        use_rollups=not raw,
    )
    rows = [row.to_json() for row in report.rows]
    say_if_empty(directory, len(report.rows), filter_text)
    dimensions = list(report.dimensions)
    if resolve:
        dimensions = add_names(rows, dimensions, output_format)
    if output_format == "json":
        keys = [*dimensions, "bytes", "packets", "flows"]
        echo(render.to_json([{k: row[k] for k in keys} for row in rows]))
        return
    columns = [*dimensions, *render.TOP_COLUMNS]
    if output_format == "csv":
        echo(render.to_csv(rows, columns), nl=False)
        return
    total = report.total
    echo(
        f"# {iso(start)} .. {iso(end)}  total {render.human(total.bytes, 'B')} "
        f"{render.human(total.packets)} packets {total.flows} flows  ({report.plan})"
    )
    formats = {
        "bytes": lambda v: render.human(v, "B"),
        "packets": render.human,
        "bps": lambda v: render.human(v, "bps"),
        "pps": render.human,
        "share": lambda v: f"{v:.1f}%",
    }
    echo(render.table(rows, columns, formats), nl=False)


@click.command("series")
@click.option(
    "--bucket", default=None, help="Bucket size (10s, 1m, 5m, 1h...; default from range)."
)
@click.option("--by", default=None, help="Split by the top values of this dimension.")
@click.option("-n", "top_n", type=int, default=5, show_default=True, help="Top values to split.")
@click.option(
    "--order", type=click.Choice(["bytes", "packets", "flows"]), default="bytes", show_default=True
)
@click.option("--raw", is_flag=True, help="Read raw flows only, not the rollups.")
@_common
@_format_option
@_resolve_option
@_served
@click.pass_context
@_report_errors
def series(
    ctx: click.Context,
    *,
    bucket: str | None,
    by: str | None,
    top_n: int,
    order: str,
    raw: bool,
    resolve: bool,
    since: str | None,
    until: str | None,
    filter_text: str | None,
    data: Path | None,
    output_format: str,
) -> None:
    """Bits/s, packets/s and flows/s per time bucket, optionally per top value + other."""
    from lanalyze.flows.query import render, reports

    start, end = _window(since, until)
    directory = resolve_data(ctx, data)
    report = reports.series(
        directory,
        since=start,
        until=end,
        bucket=bucket,
        by=by,
        top_n=top_n,
        order=order,
        filter=filter_text,
        use_rollups=not raw,
    )
    say_if_empty(directory, sum(point.flows for point in report.points), filter_text)
    columns = list(render.SERIES_COLUMNS)
    points = [point.to_json() for point in report.points]
    if resolve:
        columns = add_names(points, columns, output_format)
    if output_format == "json":
        echo(render.to_json({**report.to_json(), "points": points}))
    elif output_format == "csv":
        echo(render.to_csv(points, columns), nl=False)
    else:
        formats = {
            "bps": lambda v: render.human(v, "bps"),
            "pps": lambda v: f"{v:.1f}",
            "fps": lambda v: f"{v:.1f}",
            "bytes": lambda v: render.human(v, "B"),
        }
        echo(render.table(points, columns, formats), nl=False)


@click.command("list")
@click.option("-n", "limit", type=int, default=20, show_default=True, help="At most this many.")
@_common
@_format_option
@_resolve_option
@_served
@click.pass_context
@_report_errors
def list_command(
    ctx: click.Context,
    *,
    limit: int,
    resolve: bool,
    since: str | None,
    until: str | None,
    filter_text: str | None,
    data: Path | None,
    output_format: str,
) -> None:
    """Raw flows matching a filter, newest first."""
    from lanalyze.flows.query import render, reports

    start, end = _window(since, until)
    directory = resolve_data(ctx, data)
    flows = [
        flow.to_json()
        for flow in reports.list_flows(
            directory, since=start, until=end, filter=filter_text, limit=limit
        )
    ]
    say_if_empty(directory, len(flows), filter_text)
    columns = list(render.LIST_COLUMNS)
    if resolve:
        columns = add_names(flows, columns, output_format)
    if output_format == "json":
        echo(render.to_json(flows))
        return
    from lanalyze.flows.query.apps import protocol_name

    # Read by people: the protocol by name, as `top --by proto` shows it (JSON keeps numbers).
    for flow in flows:
        flow["protocol"] = protocol_name(flow["protocol"])
    if output_format == "csv":
        echo(render.to_csv(flows, columns), nl=False)
    else:
        echo(render.table(flows, columns, {}), nl=False)


def _percent_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


@click.command("interfaces")
@click.option("--exporter", default=None, help="With --if: this exporter's interface over time.")
@click.option("--if", "interface", type=int, default=None, help="ifIndex (with --exporter).")
@click.option("--bucket", default=None, help="Bucket size for --exporter/--if.")
@click.option(
    "--order",
    type=click.Choice(["bytes", "packets", "flows"]),
    default="bytes",
    show_default=True,
    help="Rank interfaces by in + out bytes, packets or flows.",
)
@click.option("-n", "limit", type=int, default=10, show_default=True)
@_common
@_format_option
@_resolve_option
@_served
@click.pass_context
@_report_errors
def interfaces(
    ctx: click.Context,
    *,
    exporter: str | None,
    resolve: bool,
    interface: int | None,
    bucket: str | None,
    order: str,
    limit: int,
    since: str | None,
    until: str | None,
    filter_text: str | None,
    data: Path | None,
    output_format: str,
) -> None:
    """Top interfaces by traffic (in/out bits/s), or one interface's bits/s over time.

    Interfaces are named by ifIndex, and also by name with utilisation in % of their speed
    when the SNMP poller (flows.snmp) has polled the exporter.
    """
    from lanalyze.flows.query import render, reports

    start, end = _window(since, until)
    directory = resolve_data(ctx, data)
    if (exporter is None) != (interface is None):
        raise click.UsageError("--exporter and --if go together")
    formats: dict[str, Callable[[Any], str]] = {
        "in_bps": lambda v: render.human(v, "bps"),
        "out_bps": lambda v: render.human(v, "bps"),
        "in_bytes": lambda v: render.human(v, "B"),
        "out_bytes": lambda v: render.human(v, "B"),
        "name": lambda v: v or "-",
        "in_util_pct": _percent_text,
        "out_util_pct": _percent_text,
    }
    if exporter is not None and interface is not None:
        result = reports.interface_series(
            directory, exporter=exporter, interface=interface, since=start, until=end, bucket=bucket
        ).to_json()
        point_columns = ["time", "in_bps", "out_bps"]
        if result["speed_bps"]:
            point_columns = ["time", "in_bps", "in_util_pct", "out_bps", "out_util_pct"]
        if output_format == "json":
            echo(render.to_json(result))
        elif output_format == "csv":
            echo(render.to_csv(result["points"], point_columns), nl=False)
        else:
            if result["name"]:
                echo(f"{result['name']} ({result['alias'] or 'no alias'})")
            echo(render.table(result["points"], point_columns, formats), nl=False)
        return
    rows = [
        row.to_json()
        for row in reports.top_interfaces(
            directory, since=start, until=end, order=order, limit=limit, filter=filter_text
        )
    ]
    say_if_empty(directory, len(rows), filter_text)
    columns = list(render.INTERFACE_COLUMNS)
    if resolve:
        columns = add_names(rows, columns, output_format)
    if output_format == "json":
        echo(render.to_json(rows))
    elif output_format == "csv":
        echo(render.to_csv(rows, columns), nl=False)
    else:
        echo(render.table(rows, columns, formats), nl=False)


@click.command("status")
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Flow data directory (default: general.data_dir/flows).",
)
@_format_option
@_served
@click.pass_context
@_report_errors
def status(ctx: click.Context, data: Path | None, output_format: str) -> None:
    """What is stored: per table the files, rows, bytes on disk and time range."""
    from lanalyze.flows.query import render, reports

    directory = resolve_data(ctx, data)
    tables = [table.to_json() for table in reports.status(directory)]
    say_if_empty(directory, sum(table["files"] for table in tables))
    columns = ["table", "files", "rows", "bytes", "first", "last"]
    if output_format == "json":
        echo(render.to_json(tables))
    elif output_format == "csv":
        echo(render.to_csv(tables, columns), nl=False)
    else:
        formats = {"bytes": lambda v: render.human(v, "B", 1024), "first": str, "last": str}
        echo(render.table(tables, columns, formats), nl=False)


COMMANDS = (top, series, list_command, interfaces, status)
