"""``lanalyze flows ...``: collect, decode, import and report on flows.

Each sub-command's module is imported only when that command is named (a report command
must not import the collector, and the collector not the report engine).
"""

from __future__ import annotations

import click

from lanalyze.clilazy import LazyGroup

_REPORTS = "lanalyze.flows.query.cli"


@click.group(
    cls=LazyGroup,
    lazy={
        "collect": "lanalyze.flows.collect_cli:collect",
        "import": "lanalyze.flows.collect_cli:import_pcaps",
        "exporters": "lanalyze.flows.collect_cli:exporters",
        "top": f"{_REPORTS}:top",
        "series": f"{_REPORTS}:series",
        "list": f"{_REPORTS}:list_command",
        "interfaces": f"{_REPORTS}:interfaces",
        "status": f"{_REPORTS}:status",
        "decode": "lanalyze.flows.decode_cli:decode",
        "schema": "lanalyze.flows.store_cli:schema",
        "export": "lanalyze.flows.store_cli:export",
    },
)
def flows() -> None:
    """Flow collector and reports (NetFlow v5/v9, IPFIX)."""
