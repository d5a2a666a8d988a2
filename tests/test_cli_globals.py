"""Global options after the sub-command, and a config dump the README's edits can extend."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
from click.testing import CliRunner

from lanalyze.cli import main
from lanalyze.config import Config, dump_config, parse_config


def _leaf_commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(command, click.Group):
        return [
            leaf
            for name, sub in command.commands.items()
            for leaf in _leaf_commands(sub, (*path, name))
        ]
    return [path]


def test_config_is_accepted_before_and_after_the_sub_command(tmp_path: Path) -> None:
    config = tmp_path / "lanalyze.toml"
    config.write_text(f'[general]\ndata_dir = "{tmp_path / "data"}"\n')
    runner = CliRunner()
    before = runner.invoke(main, ["--config", str(config), "config", "dump"])
    after = runner.invoke(main, ["config", "dump", "--config", str(config)])
    assert before.exit_code == 0 and after.exit_code == 0, (before.output, after.output)
    assert before.output == after.output
    assert str(tmp_path / "data") in after.output


def test_every_command_takes_config() -> None:
    leaves = _leaf_commands(main)
    assert ("mail", "ls") in leaves and ("serve",) in leaves
    for path in leaves:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "--config" in result.output, path


def test_dump_can_be_extended_with_tables_of_tables() -> None:
    text = dump_config(Config())
    assert "users = []" not in text and "signing = []" not in text
    assert "# [[web.users]]" in text and "# [[mail.users]]" in text
    assert "# [[mail.auth.signing]]" in text
    extended = (
        text
        + '\n[[web.users]]\nname = "admin"\npassword_hash = "$argon2id$x"\n'
        + '\n[[mail.users]]\nname = "bob"\npassword_hash = "$argon2id$y"\n'
        + 'addresses = ["@example.org"]\n'
    )
    config = parse_config(extended)
    assert [u.name for u in config.web.users] == ["admin"]
    assert [u.name for u in config.mail.users] == ["bob"]


def test_hash_password_prints_a_block_to_append() -> None:
    text = dump_config(Config())
    for group, table in (("web", "web.users"), ("mail", "mail.users")):
        result = CliRunner().invoke(
            main, [group, "hash-password", "--stdin", "--user", "admin"], input="long-enough\n"
        )
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"[[{table}]]\n")
        config = tomllib.loads(text + "\n" + result.output)
        section, key = table.split(".")
        assert config[section][key][0]["name"] == "admin"
