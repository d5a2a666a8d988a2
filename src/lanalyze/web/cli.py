"""``lanalyze web ...``: helpers for the console's configuration."""

from __future__ import annotations

import sys

import click


@click.group()
def web() -> None:
    """Web console: users and passwords."""


@web.command("hash-password")
@click.option(
    "--stdin",
    "from_stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)
def hash_password_command(from_stdin: bool) -> None:
    """Print an argon2 hash for a [[web.users]] entry's password_hash."""
    from lanalyze.web.auth import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise click.UsageError("use a password of at least 8 characters")
    click.echo(hash_password(password))
