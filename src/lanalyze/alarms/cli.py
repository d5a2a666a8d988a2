"""``lanalyze alarms ...``: list, show and acknowledge alarms; send a test notification.

``ls`` and ``show`` read the alarm store read-only (safe while the server runs); ``ack``
writes the acknowledgement (who: ``--by``, default the login name) to the same store;
``test-notify`` sends one made-up alarm through every configured channel and says what each
did.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from lanalyze.alarms.config import ALGORITHMS, SEVERITIES


@click.group()
def alarms() -> None:
    """Alarms raised by detection on flows and mail."""


def _data_dir(ctx: click.Context) -> Path:
    return Path(ctx.find_root().obj.config.general.data_path)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


@alarms.command("ls")
@click.option("--open", "open_only", is_flag=True, help="Open alarms only.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), help="This algorithm only.")
@click.option("--severity", type=click.Choice(SEVERITIES), help="This severity only.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def ls(  # noqa: PLR0917 - click passes the options positionally
    ctx: click.Context,
    open_only: bool,
    algorithm: str | None,
    severity: str | None,
    limit: int,
    output_format: str,
) -> None:
    """Alarms, newest first."""
    from lanalyze.alarms.store import AlarmQuery, AlarmStore

    store = AlarmStore.open_readonly(_data_dir(ctx))
    if store is None:
        rows: list[dict[str, Any]] = []
    else:
        with store:
            query = AlarmQuery(
                open_only=open_only,
                algorithm=algorithm or "",
                severity=severity or "",
                limit=limit,
            )
            rows = store.search(query).rows
    if output_format == "json":
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no alarms")
        return
    click.echo(
        f"{'ID':>6}  {'STATE':6}  {'SEVERITY':8}  {'ALGORITHM':16}  {'OPENED':19}  "
        f"{'LAST SEEN':19}  {'PEAK':>10}  ACK  SUBJECT"
    )
    for a in rows:
        click.echo(
            f"{a['id']:>6}  {a['state']:6}  {a['severity']:8}  {a['algorithm']:16}  "
            f"{_when(a['opened_at'])}  {_when(a['last_seen'])}  {a['peak']:>10g}  "
            f"{'yes' if a['ack_by'] else 'no ':3}  {a['subject']}"
        )


@alarms.command("show")
@click.argument("alarm_id", type=int)
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def show(ctx: click.Context, alarm_id: int, output_format: str) -> None:
    """One alarm with its evidence."""
    from lanalyze.alarms.store import AlarmStore

    store = AlarmStore.open_readonly(_data_dir(ctx))
    alarm = None
    points: list[tuple[float, float]] = []
    if store is not None:
        with store:
            alarm = store.get(alarm_id)
            points = store.points(alarm_id)
    if alarm is None:
        click.echo(f"lanalyze alarms show: no alarm {alarm_id}", err=True)
        sys.exit(1)
    if output_format == "json":
        click.echo(json.dumps(alarm | {"points": points}, indent=1))
        return
    for key in ("id", "algorithm", "subject", "severity", "state"):
        click.echo(f"{key + ':':12} {alarm[key]}")
    click.echo(
        f"{'value:':12} {alarm['value']:g} {alarm['unit']} (threshold {alarm['threshold']:g})"
    )
    click.echo(f"{'peak:':12} {alarm['peak']:g}")
    click.echo(f"{'opened:':12} {_when(alarm['opened_at'])}")
    click.echo(f"{'last seen:':12} {_when(alarm['last_seen'])}")
    click.echo(f"{'closed:':12} {_when(alarm['closed_at'])}")
    click.echo(f"{'findings:':12} {alarm['findings']}")
    ack = f"{alarm['ack_by']} at {_when(alarm['ack_at'])}" if alarm["ack_by"] else "no"
    click.echo(f"{'ack:':12} {ack}")
    if alarm["filter"]:
        click.echo(f"{'flows:':12} lanalyze flows list '{alarm['filter']}'")
    click.echo("evidence:")
    click.echo(json.dumps(alarm["evidence"], indent=1, sort_keys=True))


@alarms.command("ack")
@click.argument("alarm_id", type=int)
@click.option("--by", "who", help="Who acknowledges (default: your login name).")
@click.pass_context
def ack(ctx: click.Context, alarm_id: int, who: str | None) -> None:
    """Acknowledge an alarm."""
    from lanalyze.alarms.store import AlarmStore, store_path

    path = store_path(_data_dir(ctx))
    if not path.exists():
        click.echo(f"lanalyze alarms ack: no alarm {alarm_id}", err=True)
        sys.exit(1)
    with AlarmStore(path) as store:
        if not store.ack(alarm_id, who or getpass.getuser()):
            click.echo(f"lanalyze alarms ack: no alarm {alarm_id}", err=True)
            sys.exit(1)
    click.echo(f"alarm {alarm_id} acknowledged")


@alarms.command("test-notify")
@click.pass_context
def test_notify(ctx: click.Context) -> None:
    """Send one test alarm through every configured channel (routes and limits ignored)."""
    from lanalyze.alarms.notify import Notice, build_channels, deliver

    config = ctx.find_root().obj.config
    from lanalyze.mailer import Mailer

    channels = build_channels(
        config.alarms.notify,
        config.general.hostname,
        mailer=Mailer(config),
        data_dir=config.general.data_path,
    )
    if not channels:
        click.echo(
            "no notification channels configured ([[alarms.notify.webhooks]], "
            "[[alarms.notify.syslog]], [[alarms.notify.email]])",
            err=True,
        )
        sys.exit(1)
    now = time.time()
    notice = Notice(
        "test",
        {
            "id": 0,
            "algorithm": "test",
            "subject": "lanalyze alarms test-notify",
            "address": "",
            "severity": "warning",
            "state": "open",
            "opened_at": now,
            "updated_at": now,
            "last_seen": now,
            "closed_at": None,
            "findings": 1,
            "value": 1.0,
            "peak": 1.0,
            "threshold": 1.0,
            "unit": "",
            "filter": "",
            "window_start": now,
            "evidence": {},
            "ack_by": None,
            "ack_at": None,
        },
    )

    async def send_all() -> list[bool]:
        return list(await asyncio.gather(*(deliver(c, notice) for c in channels)))

    results = asyncio.run(send_all())
    for channel, ok in zip(channels, results, strict=True):
        click.echo(f"{channel.name}: {'sent' if ok else 'FAILED (see the log)'}")
    if not all(results):
        sys.exit(1)
