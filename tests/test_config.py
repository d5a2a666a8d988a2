from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from lanalyze.config import Config, dump_config, parse_config, parse_listen
from lanalyze.errors import ConfigError
from tests.conftest import lanalyze_cmd


def test_defaults_listen_on_loopback_only() -> None:
    config = Config()
    addresses = [*config.flows.listen, *config.mail.listen, config.web.listen]
    for address in addresses:
        host, _ = parse_listen(address)
        assert host in {"127.0.0.1", "::1", "localhost"}, address


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("[flows]\nbogus = 1\n", "flows.bogus", 2),
        ("[web]\nlisten = '127.0.0.1:70000'\n", "web.listen", 2),
        ("[general]\nlog_format = 'xml'\n", "general.log_format", 2),
        ("[flows]\nreceive_buffer = 'big'\n", "flows.receive_buffer", 2),
        ("[mail]\n\nlisten = ['[::1:25']\n", "mail.listen", 3),
        ("nope = 1\n", "nope", 1),
    ],
)
def test_errors_name_key_file_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    assert f"test.toml:{line}: {key}" in str(info.value)


def test_invalid_toml_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[flows\n", "x.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:2055", ("127.0.0.1", 2055)),
        ("[::1]:25", ("::1", 25)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:8080", ("localhost", 8080)),
        ("[::]:4739", ("::", 4739)),
    ],
)
def test_listen_addresses_accepted(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["2055", "::1:25", "host.example:25", "1.2.3.4:", "1.2.3.4:x"])
def test_listen_addresses_rejected(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_dump_round_trips() -> None:
    text = dump_config(Config())
    assert parse_config(text) == Config()
    assert tomllib.loads(text)["web"]["listen"] == "127.0.0.1:8080"


def test_cli_check_and_dump(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[web]\nlisten = '127.0.0.1:9999'\n")
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(good), "config", "dump"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert tomllib.loads(result.stdout)["web"]["listen"] == "127.0.0.1:9999"
    bad = tmp_path / "bad.toml"
    bad.write_text("[mail]\nlisten = ['127.0.0.1:99999']\n")
    for args in (["config", "check"], ["serve"]):
        result = subprocess.run(
            [*lanalyze_cmd(), "--config", str(bad), *args], capture_output=True, text=True
        )
        assert result.returncode != 0
        assert "mail.listen" in result.stderr
        assert f"{bad}:2" in result.stderr


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(tmp_path / "none.toml"), "config", "check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "no such configuration file" in result.stderr


def test_report_settings_moved_to_flows_query() -> None:
    """The old ``flows.rollup.query_*`` keys still load, into ``[flows.query]``; the new keys
    win where both are set, and a dump names only the new ones."""
    old = parse_config("[flows.rollup]\nquery_threads = 3\nquery_max_raw_bytes = 1000\n")
    assert (old.flows.query.threads, old.flows.query.max_raw_bytes) == (3, 1000)
    assert old.flows.deprecated_keys() == [
        ("flows.rollup.query_threads", "flows.query.threads"),
        ("flows.rollup.query_max_raw_bytes", "flows.query.max_raw_bytes"),
    ]
    assert "query_threads" not in dump_config(old)
    assert parse_config(dump_config(old)).flows.query == old.flows.query
    both = parse_config("[flows.rollup]\nquery_threads = 3\n[flows.query]\nthreads = 5\n")
    assert both.flows.query.threads == 5
    assert parse_config("").flows.deprecated_keys() == []


def test_deprecated_key_is_a_warning_not_an_error(tmp_path: Path) -> None:
    config = tmp_path / "old.toml"
    config.write_text("[flows.rollup]\nquery_threads = 3\n")
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "config", "check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "flows.rollup.query_threads is deprecated, use flows.query.threads" in result.stderr
