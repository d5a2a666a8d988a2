"""``lanalyze reports``: list the scheduled reports, send one now, render one as HTML."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from lanalyze.config import Config
    from lanalyze.reports.config import ReportConfig

EXIT_FAILED = 1
EXIT_USAGE = 2


def _config() -> Config:
    config: Config = click.get_current_context().find_root().obj.config
    return config


def _report(config: Config, name: str) -> ReportConfig:
    for report in config.reports:
        if report.name == name:
            return report
    known = ", ".join(r.name for r in config.reports) or "none configured ([[reports]])"
    click.echo(f"no report named {name!r} (known: {known})", err=True)
    sys.exit(EXIT_USAGE)


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    from lanalyze.flows.query.timespec import parse_time

    try:
        return datetime.fromtimestamp(parse_time(text) / 1000, UTC)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None


AT_HELP = "Run as if at this time (ISO 8601, -1d): the period is the one before it (default: now)."


@click.group("reports")
def reports() -> None:
    """Scheduled reports ([[reports]]): list, send now, preview."""


@reports.command("ls")
def ls() -> None:
    """The scheduled reports with their next and last run."""
    from lanalyze.reports.scheduler import load_state

    config = _config()
    state = load_state(config.general.data_path)
    now = datetime.now(UTC)
    if not config.reports:
        click.echo("no scheduled reports (add [[reports]] tables: docs/configuration.md)")
        return
    rows = []
    for report in config.reports:
        after = max(state.get(report.name, now), now)
        following = report.cron.next_after(after, report.zone).astimezone(report.zone)
        last = state.get(report.name)
        rows.append(
            {
                "name": report.name,
                "kind": report.kind,
                "period": report.period,
                "schedule": f"{report.schedule} ({report.time_zone})",
                "next": following.strftime("%Y-%m-%d %H:%M %Z"),
                "last": last.astimezone(report.zone).strftime("%Y-%m-%d %H:%M %Z") if last else "-",
                "recipients": ", ".join(report.recipients),
            }
        )
    from lanalyze.flows.query.render import table

    click.echo(table(rows, list(rows[0]), {}), nl=False)


@reports.command("run")
@click.argument("name")
@click.option("--to", "to", multiple=True, help="Send to this address instead (repeatable).")
@click.option("--at", "at_text", default=None, help=AT_HELP)
def run(name: str, to: tuple[str, ...], at_text: str | None) -> None:
    """Send report NAME now (through the mail queue or mailer.relay_host)."""
    from lanalyze.errors import MailerError
    from lanalyze.log import setup_logging
    from lanalyze.mailer import Mailer
    from lanalyze.reports.scheduler import send_report

    config = _config()
    setup_logging(config.general.log_format, "warning")
    report = _report(config, name)
    at = _at(at_text)
    try:
        sent = asyncio.run(send_report(report, config, Mailer(config), at, list(to) or None))
    except (MailerError, ValueError, OSError) as exc:
        click.echo(f"lanalyze reports run {name}: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if sent.route == "relay":
        click.echo(f"sent through {sent.detail}")
    else:
        click.echo(f"queued as {sent.detail}")
        if sent.waiting:
            click.echo(
                "no lanalyze serve runs on this data directory: it is delivered when one starts",
                err=True,
            )


@reports.command("preview")
@click.argument("name")
@click.option("--at", "at_text", default=None, help=AT_HELP)
def preview(name: str, at_text: str | None) -> None:
    """Render report NAME as one HTML page (charts inline) on stdout."""
    from lanalyze.reports.build import build
    from lanalyze.reports.message import preview as render_preview

    config = _config()
    report = _report(config, name)
    try:
        data = build(report, config, _at(at_text))
    except (ValueError, OSError) as exc:
        click.echo(f"lanalyze reports preview {name}: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(render_preview(data), nl=False)
