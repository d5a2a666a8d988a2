"""Issue 18: verdicts and signatures stay right when queue files are recycled under load.

A recycled queue file (``queuefile.Recycler``) is overwritten in place and truncated only at
commit, so until then it holds the previous, longer message's tail. These tests first fill
``queue/free/`` with long delivered files, then send many shorter messages over concurrent
connections (each takes a longer recycled file), and check that

* every DKIM-signed message (rsa-sha256 and ed25519-sha256, signed by the domain's real keys
  served by Knot on loopback) is stored with ``dkim=pass``, and the bytes the sender checks
  read are exactly the bytes the client sent and the bytes delivered;
* submission mail signed by lanalyze under the same conditions verifies (dkimpy, keys from
  the zone's records);
* DMARC rejections are policy, not protocol errors: a relay forwarding 30 forged messages and
  then a good one over one connection gets the good one accepted.

The only stand-in: the sender checks are wrapped to record the bytes they were handed (a spy,
not a mock: the real checks run).
"""

from __future__ import annotations

import hashlib
import random
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from lanalyze.mail.auth.authenticator import Authenticator
from lanalyze.mail.auth.keys import generate, write_private
from tests.mail.auth_world import keys, message, zones
from tests.mail.conftest import PASSWORD, RunningServer, password_hash, run_server
from tests.mail.dnsserver import KnotServer, knot_server

CONNECTIONS = 20
PER_CONNECTION = 8
LONG = 50_000  # with its trailer still under Recycler.max_size (64 KiB), so it is kept
RECIPIENT = "bob@example.test"


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot-load"), zones()) as server:
        yield server


def body_of(size: int, seed: int) -> str:
    line = f"line {seed:08d} of a message whose length varies a lot between messages.\r\n"
    return (line * (size // len(line) + 1))[:size].rstrip("\r\n") + "\r\n"


def signed(kind: str, size: int, seed: int) -> bytes:
    msg = message(
        "Carol <carol@none.test>" if kind == "none" else "Alice <alice@signed.test>",
        to=RECIPIENT,
        subject=f"load {seed} {kind}",
        body=body_of(size, seed),
    )
    if kind == "none":
        return msg
    pair = keys()["rsa" if kind == "rsa" else "ed"]
    algorithm = b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256"
    selector = b"rsa" if kind == "rsa" else b"ed"
    return (
        dkim.sign(msg, selector, b"signed.test", pair.private, signature_algorithm=algorithm) + msg
    )


def message_id(msg: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", msg, re.MULTILINE | re.IGNORECASE)
    assert found is not None
    return found.group(1).decode()


def fill_free_files(server: RunningServer, count: int, mailbox: str, sender: str) -> None:
    """Deliver ``count`` long messages so their queue files wait in queue/free/ (fewer stay
    there: the later ones of the fill-up take the files the earlier ones left)."""
    already = len(server.messages(mailbox))
    with smtplib.SMTP("127.0.0.1", server.port(), timeout=30) as client:
        for seed in range(count):
            long = message("Nobody <x@none.test>", to=mailbox, body=body_of(LONG, seed))
            client.sendmail(sender, [mailbox], long)
    server.wait_delivered(already + count, mailbox, timeout=60)
    free = server.server.layout.q("free")
    deadline = time.monotonic() + 30
    while len(list(free.iterdir())) < CONNECTIONS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(free.iterdir())) >= CONNECTIONS


class CheckedBytes:
    """Records, by Message-ID, the bytes handed to the real sender checks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[str, bytes] = {}
        self.lock = threading.Lock()
        original = Authenticator.check_bytes

        async def spy(auth: Authenticator, msg: bytes, **kwargs: Any) -> Any:
            found = re.search(rb"^Message-ID: (<[^>]+>)", msg, re.MULTILINE | re.IGNORECASE)
            if found is not None:
                with self.lock:
                    self.seen[found.group(1).decode()] = msg
            return await original(auth, msg, **kwargs)

        monkeypatch.setattr(Authenticator, "check_bytes", spy)


def test_signed_mail_passes_dkim_under_load_with_recycled_files(
    dns: KnotServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = CheckedBytes(monkeypatch)
    rng = random.Random(18)
    kinds = ["rsa", "rsa", "ed", "none"]
    # Per connection: long first, then much shorter ones, so short messages land in recycled
    # files longer than themselves (free files are over LONG bytes, the shortest message 300).
    plan = [
        [
            (kinds[(c + i) % 4], rng.choice([LONG - 10_000, 20_000, 3_000, 300]), c * 100 + i)
            for i in range(PER_CONNECTION)
        ]
        for c in range(CONNECTIONS)
    ]
    sent: dict[str, tuple[str, bytes]] = {}
    errors: list[str] = []
    overrides = {
        "mailboxes": ["alice@example.test", RECIPIENT],
        "max_connections_per_client": 100,
        "auth": {"enabled": True, "resolver": dns.address, "dns_timeout": 5.0},
    }
    with run_server(data_dir, **overrides) as server:
        fill_free_files(server, CONNECTIONS * PER_CONNECTION, RECIPIENT, "x@none.test")
        delivered_before = len(server.messages(RECIPIENT))
        start = threading.Barrier(CONNECTIONS)

        def session(items: list[tuple[str, int, int]]) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", server.port(), timeout=60) as client:
                    client.ehlo("mx.signed.test")
                    start.wait(timeout=30)
                    for kind, size, seed in sorted(items, key=lambda item: -item[1]):
                        msg = signed(kind, size, seed)
                        sent[message_id(msg)] = (kind, msg)
                        client.sendmail("alice@signed.test", [RECIPIENT], msg)
            except Exception as exc:  # reported below with the message that failed
                errors.append(repr(exc))

        threads = [threading.Thread(target=session, args=(items,)) for items in plan]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert errors == []
        total = delivered_before + CONNECTIONS * PER_CONNECTION
        delivered = server.wait_delivered(total, RECIPIENT, timeout=120)

    by_id: dict[str, bytes] = {}
    for copy in delivered:
        found = re.search(rb"^Message-ID: (<[^>]+>)", copy, re.MULTILINE | re.IGNORECASE)
        if found is not None:
            by_id[found.group(1).decode()] = copy
    words: dict[str, int] = {}
    for mid, (kind, msg) in sent.items():
        copy = by_id[mid]
        # What the checks read is what the client sent and what was delivered (Maildir
        # stores LF line ends and adds Return-Path and our fields in front).
        assert checked.seen[mid] == msg, (kind, len(msg), len(checked.seen[mid]))
        assert copy.endswith(msg.replace(b"\r\n", b"\n"))
        header = copy.split(b"\n\n", 1)[0].decode().replace("\n\t", " ").replace("\n ", " ")
        ours = [h for h in header.split("\n") if h.startswith("Authentication-Results:")]
        assert len(ours) == 1
        if kind == "none":
            continue
        algorithm = "rsa-sha256" if kind == "rsa" else "ed25519-sha256"
        assert f"dkim=pass header.d=signed.test header.s={kind} header.a={algorithm}" in ours[0]
        words[kind] = words.get(kind, 0) + 1
    assert words == {"rsa": CONNECTIONS * PER_CONNECTION // 2, "ed": CONNECTIONS * 2}


def test_submission_signatures_verify_with_recycled_files(
    data_dir: Path, tls_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = tls_pair
    signing, records = [], {}
    for selector, algorithm in [("r1", "rsa"), ("e1", "ed25519")]:
        pair = generate(algorithm, 1024)
        key_file = tmp_path / f"{selector}.key"
        write_private(key_file, pair.private)
        signing.append(
            {
                "domain": "example.test",
                "selector": selector,
                "key_file": str(key_file),
                "algorithm": algorithm,
            }
        )
        records[f"{selector}._domainkey.example.test."] = pair.txt_record.encode()
    overrides = {
        "submission_listen": ["127.0.0.1:0"],
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users": [
            {"name": "alice", "password_hash": password_hash(), "addresses": ["alice@example.test"]}
        ],
        # Signing needs no DNS; the inbound checks are off so the fill-up mail needs none.
        "auth": {"enabled": True, "resolver": "127.0.0.1:9", "signing": signing},
    }
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sizes = [300, 2000, 300, 9000, 300, 40_000, 500, 300]
    with run_server(data_dir, **overrides) as server:
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
            client.starttls(context=context)
            client.login("alice", PASSWORD)
            for seed in range(len(sizes)):
                long = message("Alice <alice@example.test>", to=RECIPIENT, body=body_of(LONG, seed))
                client.sendmail("alice@example.test", [RECIPIENT], long)
        server.wait_delivered(len(sizes), RECIPIENT, timeout=60)
        free = server.server.layout.q("free")
        deadline = time.monotonic() + 30
        while len(list(free.iterdir())) < len(sizes) and time.monotonic() < deadline:
            time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
            client.starttls(context=context)
            client.login("alice", PASSWORD)
            for seed, size in enumerate(sizes):
                short = message(
                    "Alice <alice@example.test>",
                    to=RECIPIENT,
                    subject=f"short {seed}",
                    body=body_of(size, seed),
                )
                client.sendmail("alice@example.test", [RECIPIENT], short)
        delivered = server.wait_delivered(2 * len(sizes), RECIPIENT, timeout=60)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode())

    shorts = [copy for copy in delivered if b"Subject: short " in copy]
    assert len(shorts) == len(sizes)
    for copy in shorts:
        wire = re.sub(rb"\r?\n", b"\r\n", copy)
        if wire.startswith(b"Return-Path:"):
            wire = wire.split(b"\r\n", 1)[1]
        verifier = dkim.DKIM(wire)
        for index in range(2):
            assert verifier.verify(idx=index, dnsfunc=dnsfunc), hashlib.sha1(wire).hexdigest()


def test_forged_mail_does_not_end_the_relays_session(dns: KnotServer, data_dir: Path) -> None:
    overrides = {
        "mailboxes": ["alice@example.test", RECIPIENT],
        "auth": {"enabled": True, "resolver": dns.address, "dns_timeout": 5.0},
    }
    with run_server(data_dir, **overrides) as server:
        with smtplib.SMTP("127.0.0.1", server.port(), timeout=30) as client:
            client.ehlo("relay.example.net")
            for seed in range(30):
                forged = message("Alice <alice@signed.test>", to=RECIPIENT, subject=f"f{seed}")
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail("alice@signed.test", [RECIPIENT], forged)
                assert refused.value.smtp_code == 550
            good = signed("rsa", 400, 1)
            assert client.sendmail("alice@signed.test", [RECIPIENT], good) == {}
        arrived = server.wait_delivered(1, RECIPIENT)
    assert b"dkim=pass" in arrived[0]
