"""`web.listen` takes one address or a list (like `flows.listen` and `mail.listen`), and a
console reachable from the network without TLS is refused unless `web.allow_plain_http`."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
from pathlib import Path

import pytest

from lanalyze.config import parse_config
from lanalyze.errors import ConfigError
from lanalyze.service import BindError
from lanalyze.web.app import WebServer
from lanalyze.web.config import WebConfig
from tests.conftest import lanalyze_cmd
from tests.web.live import live_console


def _healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_every_listen_form_accepts_one_address_or_a_list() -> None:
    config = parse_config(
        '[flows]\nlisten = "127.0.0.1:2055"\n'
        '[mail]\nlisten = "127.0.0.1:2525"\nsmtps_listen = "127.0.0.1:2465"\n'
        'tls_cert = "/c.pem"\ntls_key = "/k.pem"\n'
        '[web]\nlisten = ["127.0.0.1:8080", "[::1]:8080"]\n'
    )
    assert config.flows.listen == ["127.0.0.1:2055"]
    assert config.mail.listen == ["127.0.0.1:2525"]
    assert config.mail.smtps_listen == ["127.0.0.1:2465"]
    assert config.web.addresses == ["127.0.0.1:8080", "[::1]:8080"]
    assert parse_config('[web]\nlisten = "127.0.0.1:8081"\n').web.addresses == ["127.0.0.1:8081"]


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ('["127.0.0.1:8080", "127.0.0.1:99999"]', "port must be a number"),
        ("[]", "at least one address"),
        ('"8080"', "expected HOST:PORT"),
    ],
)
def test_bad_web_listen_names_the_key(listen: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[web]\nlisten = {listen}\n", "t.toml")
    assert "t.toml:2: web.listen" in str(info.value)
    assert message in str(info.value)


def test_console_listens_on_every_address(data_dir: Path) -> None:
    with live_console(data_dir, listen=["127.0.0.1:0", "127.0.0.1:0"]) as live:
        ports = [port for _, port in live.server.addresses]
        assert len(set(ports)) == 2
        assert [_healthz(port) for port in ports] == [200, 200]


def test_a_busy_address_in_the_list_names_its_index_and_binds_nothing(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        server = WebServer(
            WebConfig(listen=[f"127.0.0.1:{free}", f"127.0.0.1:{taken}"], warm_ranges=[]),
            data_dir,
        )
        with pytest.raises(BindError) as info:
            asyncio.run(server.start())
        assert info.value.key == "web.listen[1]"
        # The first address was released again: binding it now succeeds.
        with socket.socket() as again:
            again.bind(("127.0.0.1", free))


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:80"])
def test_plain_http_beyond_loopback_is_refused_saying_how(address: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f'[web]\nlisten = ["127.0.0.1:8080", "{address}"]\n', "t.toml")
    message = str(info.value)
    assert address in message
    for key in ("web.tls_cert", "web.tls_key", "web.allow_plain_http = true"):
        assert key in message


@pytest.mark.parametrize(
    "extra",
    [
        "allow_plain_http = true",
        'tls_cert = "/etc/ssl/c.pem"\ntls_key = "/etc/ssl/k.pem"',
        "enabled = false",
    ],
)
def test_plain_http_beyond_loopback_when_allowed_or_tls(extra: str) -> None:
    config = parse_config(f'[web]\nlisten = "0.0.0.0:8080"\n{extra}\n')
    assert config.web.addresses == ["0.0.0.0:8080"]


@pytest.mark.parametrize("address", ["127.0.0.2:8080", "[::1]:8080", "localhost:8080"])
def test_loopback_needs_no_tls(address: str) -> None:
    assert parse_config(f'[web]\nlisten = "{address}"\n').web.addresses == [address]


def test_serve_refuses_plain_http_beyond_loopback(tmp_path: Path) -> None:
    config = tmp_path / "l.toml"
    config.write_text(
        f'[general]\ndata_dir = "{tmp_path / "data"}"\n'
        '[flows]\nenabled = false\n[mail]\nenabled = false\n[web]\nlisten = "0.0.0.0:0"\n'
    )
    result = subprocess.run(
        [*lanalyze_cmd(), "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "web.allow_plain_http = true" in result.stderr


def test_console_answers_while_the_main_event_loop_is_busy(data_dir: Path) -> None:
    """The console runs on its own event loop (issue 19), so a page does not wait behind the
    SMTP sessions' callbacks on ``lanalyze serve``'s loop. Here that loop is blocked outright
    by a synchronous request made from it: a console on the same loop could never answer."""

    async def main() -> int:
        server = WebServer(WebConfig(listen="127.0.0.1:0", warm_ranges=[]), data_dir)
        await server.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=10)
            try:
                conn.request("GET", "/healthz")  # blocks this loop until the answer is in
                return conn.getresponse().status
            finally:
                conn.close()
        finally:
            await server.stop()

    assert asyncio.run(main()) == 200
