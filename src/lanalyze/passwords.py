"""Passwords of console users (``[[web.users]]``) and SMTP AUTH users (``[[mail.users]]``).

One argon2id hasher (argon2-cffi's defaults, RFC 9106's second recommended option) and one
``hash-password`` command shape for both: the same length rule, the same way to read the
password, and the TOML block to paste into the configuration.
"""

from __future__ import annotations

import sys

import click
import tomli_w
from argon2 import PasswordHasher

HASHER = PasswordHasher()
MIN_LENGTH = 8


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def hash_password_command(table: str, footer: str = "") -> click.Command:
    """The ``hash-password`` command of the group that owns ``[[table]]``."""

    @click.command("hash-password")
    @click.option(
        "--stdin",
        "from_stdin",
        is_flag=True,
        help="Read the password from the first line of standard input instead of prompting.",
    )
    @click.option(
        "--user",
        "user",
        metavar="NAME",
        help=f"Print a whole [[{table}]] table for this user, ready to append to the "
        "configuration, instead of the bare hash.",
    )
    def command(from_stdin: bool, user: str | None) -> None:
        if from_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        if len(password) < MIN_LENGTH:
            raise click.UsageError(f"use a password of at least {MIN_LENGTH} characters")
        digest = hash_password(password)
        if user is None:
            click.echo(digest)
            return
        entry = {"name": user, "password_hash": digest}
        click.echo(f"[[{table}]]\n" + tomli_w.dumps(entry) + footer, nl=False)

    command.help = (
        f"Print an argon2 hash for a [[{table}]] entry's password_hash "
        "(with --user, the whole entry)."
    )
    return command
