"""Outbound DKIM: `lanalyze mail dkim keygen`, then sign(), then our own verifier via knotd.

The DNS record published is exactly what keygen printed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanalyze.mail.auth import AuthConfig, Authenticator, SigningKey, sender_allowed, sign
from lanalyze.mail.auth.dkim_verify import verify_dkim
from lanalyze.mail.auth.dns import Resolver
from tests.conftest import lanalyze_cmd
from tests.mail.auth_world import message
from tests.mail.dnsserver import KnotServer, knot_server, txt

DOMAIN = "outbound.test"


def keygen(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lanalyze_cmd(), "--config", str(config_file), "mail", "dkim", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KnotServer, AuthConfig]]:
    base = tmp_path_factory.mktemp("signing")
    data_dir = base / "data"
    config_file = base / "lanalyze.toml"
    config_file.write_text(f'[general]\ndata_dir = "{data_dir}"\n')
    records = []
    for selector, algorithm in [("r1", "rsa"), ("e1", "ed25519")]:
        done = keygen(
            config_file, "--domain", DOMAIN, "--selector", selector, "--algorithm", algorithm
        )
        assert done.returncode == 0, done.stderr
        start = done.stdout.index(f"{selector}._domainkey.")
        records.append(done.stdout[start : done.stdout.index(")", start) + 1])
    zone = "\n".join([f"@ TXT {txt('v=spf1 -all')}", *records])
    with knot_server(base / "knot", {DOMAIN: zone}) as server:
        key_dir = data_dir / "mail" / "dkim"
        config = AuthConfig(
            resolver=server.address,
            signing=[
                SigningKey(domain=DOMAIN, selector="r1", key_file=key_dir / f"{DOMAIN}.r1.rsa.key"),
                SigningKey(
                    domain=DOMAIN,
                    selector="e1",
                    key_file=key_dir / f"{DOMAIN}.e1.ed25519.key",
                    algorithm="ed25519",
                ),
            ],
        )
        yield server, config


def test_keygen_writes_private_key_0600(world: tuple[KnotServer, AuthConfig]) -> None:
    _, config = world
    for key in config.signing:
        mode = stat.S_IMODE(os.stat(key.key_file).st_mode)
        assert mode == 0o600, oct(mode)


def test_keygen_refuses_to_overwrite(world: tuple[KnotServer, AuthConfig], tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text("")
    args = ["--domain", "x.test", "--selector", "s", "--dir", str(tmp_path / "k"), "--bits", "1024"]
    assert keygen(config_file, *args).returncode == 0
    again = keygen(config_file, *args)
    assert again.returncode != 0 and "exists" in again.stderr
    assert keygen(config_file, *args, "--force").returncode == 0


def test_signed_mail_verifies_with_both_algorithms(
    world: tuple[KnotServer, AuthConfig], tmp_path: Path
) -> None:
    server, config = world
    path = tmp_path / "out.eml"
    msg = message(from_header=f"Alice <alice@{DOMAIN}>")
    path.write_bytes(msg)
    headers = asyncio.run(sign(path, config=config, from_domain=DOMAIN))
    assert headers.count(b"DKIM-Signature:") == 2 and headers.endswith(b"\r\n")
    assert b"a=rsa-sha256" in headers and b"a=ed25519-sha256" in headers
    # The component offers the same as a method, the shape the SMTP server's hook calls.
    via_component = asyncio.run(
        Authenticator(config, "mx.test").sign(path, user="alice", from_domain=DOMAIN)
    )
    assert via_component.count(b"DKIM-Signature:") == 2
    signed = headers + msg
    results = asyncio.run(verify_dkim(Resolver(server.address, 2.0), signed))
    assert [(r.result, r.selector) for r in results] == [("pass", "r1"), ("pass", "e1")]
    # And the whole verdict: DKIM alone aligns (SPF is -all for everyone).
    path.write_bytes(signed)
    auth = Authenticator(config, "mx.test")
    verdict = asyncio.run(
        auth.check(
            path,
            mail_from=f"alice@{DOMAIN}",
            helo="client",
            client_ip="198.51.100.7",
            rcpt_to=["x@y.test"],
            authenticated_user=None,
        )
    )
    assert (verdict.spf, verdict.dkim, verdict.dmarc) == ("fail", "pass", "none")


def test_subdomain_uses_parent_key_and_unknown_domain_gets_nothing(
    world: tuple[KnotServer, AuthConfig], tmp_path: Path
) -> None:
    _, config = world
    path = tmp_path / "m.eml"
    path.write_bytes(message(from_header=f"a@news.{DOMAIN}"))
    assert b"d=outbound.test" in asyncio.run(
        sign(path, config=config, from_domain=f"news.{DOMAIN}")
    )
    assert asyncio.run(sign(path, config=config, from_domain="other.test")) == b""


def test_missing_key_file_is_skipped_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(message(from_header="a@gone.test"))
    config = AuthConfig(
        signing=[SigningKey(domain="gone.test", selector="s", key_file=tmp_path / "absent.key")]
    )
    assert asyncio.run(sign(path, config=config, from_domain="gone.test")) == b""


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("alice@example.test", True),
        ("<Alice@Example.TEST>", True),
        ("sales@example.test", True),
        ("anyone@team.test", True),
        ("bob@example.test", False),
        ("alice@example.test.evil", False),
        ("anyone@sub.team.test", False),
        ("", False),
        ("alice", False),
    ],
)
def test_sender_allowed(address: str, allowed: bool) -> None:
    owned = {"alice@example.test": ["sales@example.test", "@team.test"]}
    assert sender_allowed("alice@example.test", address, owned) is allowed
    assert sender_allowed("mallory", address, owned) is False
