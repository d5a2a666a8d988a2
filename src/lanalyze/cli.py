"""The ``lanalyze`` command: ``serve``, ``config``, and the ``flows`` and ``mail`` groups.

Every sub-command loads the same validated configuration; a configuration error is printed
(naming the key, file and line) and the command exits with status 2.

Start-up cost is part of every command's answer time, so this module imports nothing heavy:
sub-command groups are loaded when named (:mod:`lanalyze.clilazy`), and the configuration
(pydantic) only when a command first asks for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lanalyze.clilazy import LazyGroup

if TYPE_CHECKING:
    from lanalyze.config import Config

EXIT_CONFIG = 2
EXIT_START = 3


class AppContext:
    """What the command line said; the configuration is loaded on first use."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from lanalyze.config import load_config
            from lanalyze.errors import ConfigError

            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                click.echo(f"configuration error:\n{exc}", err=True)
                sys.exit(EXIT_CONFIG)
            # On stderr, not the log: every command loads the configuration before it sets
            # logging up, and `config check` must show it too.
            for old, new in self._config.flows.deprecated_keys():
                click.echo(f"configuration warning: {old} is deprecated, use {new}", err=True)
        return self._config

    @property
    def defaults_only(self) -> bool:
        """No configuration file (none named, none at the default places): the built-in
        defaults, which need no validation, so a report command may use them without loading
        :attr:`config` (see :func:`lanalyze.flows.query.cli.resolve_data`)."""
        from lanalyze.configpath import default_config_path

        return self._config is None and self.config_path is None and default_config_path() is None


pass_app = click.make_pass_decorator(AppContext)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    lazy={
        "flows": "lanalyze.flows.cli:flows",
        "mail": "lanalyze.mail.cli:mail",
        "web": "lanalyze.web.cli:web",
        "alarms": "lanalyze.alarms.cli:alarms",
        "reports": "lanalyze.reports.cli:reports",
        "install-service": "lanalyze.systemd:install_service",
    },
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="LANALYZE_CONFIG",
    help="TOML configuration file (default: /etc/lanalyze/lanalyze.toml, then "
    "~/.config/lanalyze/lanalyze.toml, else built-in defaults).",
)
@click.version_option(package_name="lanalyze")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """lanalyze: flow analytics and a mail server that catches forged senders."""
    ctx.obj = AppContext(config_path)


@main.command()
@pass_app
def serve(app: AppContext) -> None:
    """Run every enabled service: flow collector, SMTP listeners, web console and API."""
    from lanalyze.errors import StartError
    from lanalyze.log import setup_logging
    from lanalyze.serve import run, run_loop

    config = app.config
    setup_logging(config.general.log_format, config.general.log_level)
    try:
        run_loop(run(config))
    except StartError as exc:
        click.echo(f"lanalyze serve: {exc}", err=True)
        sys.exit(EXIT_START)


@main.group("config")
def config_group() -> None:
    """Check or print the configuration."""


@config_group.command("check")
@pass_app
def config_check(app: AppContext) -> None:
    """Validate the configuration file; exit non-zero naming each wrong key."""
    app.config  # noqa: B018  (loading validates; errors exit)
    click.echo(f"{app.config_path or 'built-in defaults'}: ok")


@config_group.command("dump")
@pass_app
def config_dump(app: AppContext) -> None:
    """Print the effective settings, defaults included, as TOML."""
    from lanalyze.config import dump_config

    click.echo(dump_config(app.config), nl=False)


def _set_config_path(ctx: click.Context, _: click.Parameter, value: Path | None) -> None:
    if value is not None:
        app = ctx.find_object(AppContext)
        if app is not None:
            app.config_path = value


def _accept_global_options(command: click.Command) -> None:
    """Give every sub-command ``--config`` too, so it may follow the sub-command's name.

    ``lanalyze --config F mail ls`` and ``lanalyze mail ls --config F`` mean the same; the
    value is stored on the one :class:`AppContext` before anything loads the configuration.
    A lazy group's commands get it when they are imported, so start-up imports none of them.
    """
    if command is not main and not any(p.name == "config_path" for p in command.params):
        command.params.append(
            click.Option(
                ["--config", "config_path"],
                type=click.Path(path_type=Path, dir_okay=False),
                expose_value=False,
                callback=_set_config_path,
                help="TOML configuration file (same as `lanalyze --config FILE ...`).",
            )
        )
    if isinstance(command, LazyGroup):
        command.commands.on_load = _accept_global_options
        for sub in command.commands.loaded():
            _accept_global_options(sub)
    elif isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_global_options(sub)


_accept_global_options(main)
