"""``lanalyze web ...``: helpers for the console's configuration."""

from __future__ import annotations

import click

from lanalyze.passwords import hash_password_command


@click.group()
def web() -> None:
    """Web console: users and passwords."""


web.add_command(hash_password_command("web.users"))
