"""``lanalyze web ...``: helpers for the console's configuration, and API tokens."""

from __future__ import annotations

import json
import time

import click

from lanalyze.passwords import hash_password_command
from lanalyze.web.tokens import TokenStore, token_path, valid_id


@click.group()
def web() -> None:
    """Web console: users, passwords and API tokens."""


web.add_command(hash_password_command("web.users"))


def _store(ctx: click.Context) -> TokenStore:
    config = ctx.find_root().obj.config
    return TokenStore(token_path(config.general.data_path))


@web.group("token")
def token_group() -> None:
    """API tokens for scripts: `Authorization: Bearer TOKEN` acts as the token's user.

    Tokens are stored hashed in <data_dir>/web/api-tokens.json; a running server sees new and
    revoked ones at once.
    """


@token_group.command("create")
@click.option("--user", "user", required=True, metavar="NAME", help="A [[web.users]] name.")
@click.option("--name", "label", default="", metavar="TEXT", help="What the token is for.")
@click.pass_context
def token_create(ctx: click.Context, user: str, label: str) -> None:
    """Create a token acting as USER and print it (once: only its hash is kept)."""
    config = ctx.find_root().obj.config
    if user not in {entry.name for entry in config.web.users}:
        raise click.UsageError(f"no user {user!r} in [[web.users]] (a token acts as a user)")
    try:
        token, entry = _store(ctx).create(user, label)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    click.echo(
        f"token {entry.id} for {user}: send it as `Authorization: Bearer <token>`; "
        f"`lanalyze web token revoke {entry.id}` ends it",
        err=True,
    )


@token_group.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
def token_list(ctx: click.Context, fmt: str) -> None:
    """List tokens (id, user, creation time, name); never the tokens themselves."""
    entries = _store(ctx).tokens()
    if fmt == "json":
        rows = [{"id": e.id, "user": e.user, "name": e.name, "created": e.created} for e in entries]
        click.echo(json.dumps(rows, indent=1))
        return
    if not entries:
        click.echo("no API tokens (`lanalyze web token create --user NAME` makes one)")
        return
    click.echo(f"{'id':<14}{'user':<20}{'created (UTC)':<22}name")
    for e in entries:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created))
        click.echo(f"{e.id:<14}{e.user:<20}{created:<22}{e.name}")


@token_group.command("revoke")
@click.argument("token_ids", nargs=-1, required=True, metavar="ID...")
@click.pass_context
def token_revoke(ctx: click.Context, token_ids: tuple[str, ...]) -> None:
    """Delete tokens by id (as `token list` shows); a running server refuses them at once."""
    bad = [token_id for token_id in token_ids if not valid_id(token_id)]
    if bad:
        raise click.UsageError(f"not a token id: {', '.join(bad)} (12 hex digits, `token list`)")
    try:
        missing = _store(ctx).revoke(list(token_ids))
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for token_id in token_ids:
        if token_id not in missing:
            click.echo(f"revoked {token_id}")
    if missing:
        raise click.ClickException(f"no such token: {', '.join(missing)}")
