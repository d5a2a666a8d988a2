"""End to end: a message submitted on lanalyze's submission port (AUTH, DKIM-signed there),
then sent by an MTA to lanalyze's MTA port, passes SPF, DKIM and DMARC there.

The domain's SPF, DKIM keys (one RSA, one Ed25519, made by keygen's functions) and DMARC
p=reject are served by a real Knot DNS server; lanalyze's checks are pointed at it.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanalyze.mail.auth.keys import generate, write_private
from tests.mail.conftest import PASSWORD, password_hash, run_server
from tests.mail.dnsserver import KnotServer, knot_server, txt

DOMAIN = "example.test"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KnotServer, list[dict]]]:
    base = tmp_path_factory.mktemp("e2e")
    signing = []
    records = [
        f"@ TXT {txt('v=spf1 ip4:127.0.0.1 -all')}",
        f"_dmarc TXT {txt('v=DMARC1; p=reject; adkim=s; aspf=s')}",
    ]
    for selector, algorithm in [("r1", "rsa"), ("e1", "ed25519")]:
        pair = generate(algorithm, 1024)
        key_file = base / f"{selector}.key"
        write_private(key_file, pair.private)
        signing.append(
            {
                "domain": DOMAIN,
                "selector": selector,
                "key_file": str(key_file),
                "algorithm": algorithm,
            }
        )
        records.append(f"{selector}._domainkey TXT {txt(pair.txt_record)}")
    with knot_server(base / "knot", {DOMAIN: "\n".join(records)}) as server:
        yield server, signing


def no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_submission_to_mta_passes_spf_dkim_dmarc(
    world: tuple[KnotServer, list[dict]], data_dir: Path, tls_pair: tuple[Path, Path]
) -> None:
    dns, signing = world
    cert, key = tls_pair
    overrides = {
        "submission_listen": ["127.0.0.1:0"],
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users": [
            {"name": "alice", "password_hash": password_hash(), "addresses": [f"alice@{DOMAIN}"]}
        ],
        "auth": {"enabled": True, "resolver": dns.address, "dns_timeout": 2.0, "signing": signing},
    }
    message = (
        f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@{DOMAIN}\r\nSubject: hello\r\n"
        f"Message-ID: <e2e.1@{DOMAIN}>\r\n\r\nSigned on submission, checked on arrival.\r\n"
    ).encode()
    with run_server(data_dir, **overrides) as server:
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=10) as client:
            client.starttls(context=no_verify())
            client.login("alice", PASSWORD)
            client.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], message)
        submitted = server.wait_delivered(1, f"bob@{DOMAIN}")[0]
        assert submitted.count(b"DKIM-Signature:") == 2
        assert b"auth=pass smtp.auth=alice" in submitted

        # What the outbound MTA would send: the message as it left the submission side
        # (Maildir stores LF line ends and adds Return-Path at delivery).
        outgoing = re.sub(rb"\r?\n", b"\r\n", submitted)
        if outgoing.startswith(b"Return-Path:"):
            outgoing = outgoing.split(b"\r\n", 1)[1]
        with smtplib.SMTP("127.0.0.1", server.port("mta"), timeout=10) as mta:
            mta.ehlo(f"mail.{DOMAIN}")
            mta.sendmail(f"alice@{DOMAIN}", [f"alice@{DOMAIN}"], outgoing)
        arrived = server.wait_delivered(1, "alice@example.test")[0]

    header = arrived.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
    unfolded = header.replace("\n\t", " ").replace("\n ", " ")
    ours = [
        line
        for line in unfolded.split("\n")
        if line.startswith("Authentication-Results: mx.example.test;")
    ]
    # The submission side's auth=pass field claimed our authserv-id: removed on arrival.
    assert len(ours) == 1, ours
    assert f"spf=pass smtp.mailfrom=alice@{DOMAIN}" in ours[0]
    assert f"dkim=pass header.d={DOMAIN} header.s=r1 header.a=rsa-sha256" in ours[0]
    assert f"dkim=pass header.d={DOMAIN} header.s=e1 header.a=ed25519-sha256" in ours[0]
    assert f"dmarc=pass (p=reject dis=none) header.from={DOMAIN}" in ours[0]
