"""``lanalyze flows ...``: collect, decode, import and report on flows."""

from __future__ import annotations

import click


@click.group()
def flows() -> None:
    """Flow collector and reports (NetFlow v5/v9, IPFIX)."""


def _add_collector_commands() -> None:
    from lanalyze.flows.collect_cli import collect, exporters, import_pcaps

    for command in (collect, import_pcaps, exporters):
        flows.add_command(command)


_add_collector_commands()


def _add_report_commands() -> None:
    from lanalyze.flows.query.cli import COMMANDS

    for command in COMMANDS:
        flows.add_command(command)


_add_report_commands()


def _add_decode_command() -> None:
    from lanalyze.flows.decode_cli import decode

    flows.add_command(decode)


_add_decode_command()
