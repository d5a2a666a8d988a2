"""``lanalyze mail ...``: the message store, the queue and a test client."""

from __future__ import annotations

import click


@click.group()
def mail() -> None:
    """SMTP server: messages, queue, verdicts."""
