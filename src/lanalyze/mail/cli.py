"""``lanalyze mail ...``: the message store, the queue and a test client."""

from __future__ import annotations

import click


@click.group()
def mail() -> None:
    """SMTP server: messages, queue, verdicts."""


def _add_dkim_commands() -> None:
    from lanalyze.mail.auth.cli import dkim

    mail.add_command(dkim)


_add_dkim_commands()
