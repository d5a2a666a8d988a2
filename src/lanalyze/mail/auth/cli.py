"""``lanalyze mail dkim keygen``: make a DKIM key pair and say what to publish and configure."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from lanalyze.mail.auth.keys import Algorithm, generate, key_path, write_private, zone_record

_LABELS = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def _app_config(ctx: click.Context) -> Any:
    """The validated configuration of the root ``lanalyze`` command (``--config``)."""
    return ctx.find_root().obj.config


@click.group()
def dkim() -> None:
    """DKIM keys for signing mail from submission users."""


@dkim.command()
@click.option("--domain", required=True, help="Domain whose mail the key signs (d=).")
@click.option("--selector", required=True, help="Selector (s=), e.g. 2026a.")
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="rsa-sha256 (every receiver) or ed25519-sha256 (RFC 8463; sign with both).",
)
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the key (default: <data_dir>/mail/dkim/).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@click.pass_context
def keygen(
    ctx: click.Context,
    *,
    domain: str,
    selector: str,
    algorithm: str,
    bits: int,
    directory: Path | None,
    force: bool,
) -> None:
    """Write a private key (mode 0600) and print the DNS TXT record to publish."""
    domain = domain.strip().rstrip(".").lower()
    if not _LABELS.match(domain) or not _LABELS.match(selector):
        raise click.BadParameter("domain and selector must be DNS labels separated by dots")
    if directory is None:
        directory = Path(_app_config(ctx).general.data_path) / "mail" / "dkim"
    alg: Algorithm = "rsa" if algorithm == "rsa" else "ed25519"
    path = key_path(directory, domain, selector, alg)
    pair = generate(alg, bits)
    try:
        write_private(path, pair.private, overwrite=force)
    except FileExistsError:
        raise click.ClickException(f"{path} exists (use --force to replace it)") from None
    click.echo(f"Private key written to {path} (mode 0600).\n")
    click.echo("Publish this DNS record:\n")
    click.echo(zone_record(domain, selector, pair))
    click.echo("\nThen add to the configuration:\n")
    click.echo("[[mail.auth.signing]]")
    click.echo(f'domain = "{domain}"')
    click.echo(f'selector = "{selector}"')
    click.echo(f'key_file = "{path}"')
    click.echo(f'algorithm = "{alg}"')
