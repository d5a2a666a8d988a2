"""``lanalyze flows ...``: collect, decode, import and report on flows."""

from __future__ import annotations

import click


@click.group()
def flows() -> None:
    """Flow collector and reports (NetFlow v5/v9, IPFIX)."""
