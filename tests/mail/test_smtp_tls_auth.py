"""STARTTLS, implicit TLS, AUTH PLAIN/LOGIN, submission rules and sender binding (smtplib)."""

from __future__ import annotations

import base64
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest

from lanalyze.metrics import REGISTRY
from lanalyze.throttle import ClientThrottle
from tests.mail.conftest import PASSWORD, RunningServer, password_hash, run_server

MESSAGE = b"From: alice@example.test\r\nSubject: signed off\r\n\r\nhello\r\n"


def context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_auth_is_offered_only_after_starttls(tls_server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server.port(), timeout=10) as client:
        client.ehlo("c")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        code, _ = client.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
        assert code == 503
        client.starttls(context=context())
        client.ehlo("c")
        assert client.has_extn("auth") and not client.has_extn("starttls")
        assert "PLAIN" in client.esmtp_features["auth"]
        assert "LOGIN" in client.esmtp_features["auth"]


def test_submission_requires_auth_and_binds_sender(tls_server: RunningServer) -> None:
    port = tls_server.port("submission")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context())
        client.ehlo("c")
        assert client.mail("alice@example.test")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice", "wrong")
        assert refused.value.smtp_code == 535
        client.login("alice", PASSWORD)
        assert client.mail("bob@example.test")[0] == 553  # not hers
        client.rset()
        forged = MESSAGE.replace(b"From: alice@", b"From: bob@")
        with pytest.raises(smtplib.SMTPDataError) as bad_header:
            client.sendmail("alice@example.test", ["bob@example.test"], forged)
        assert bad_header.value.smtp_code == 553
        client.rset()
        assert client.sendmail("alice@example.test", ["bob@example.test"], MESSAGE) == {}
    [message] = tls_server.wait_delivered(1, mailbox="bob@example.test")
    assert b"with ESMTPSA id" in message


def test_auth_login_and_relay_for_authenticated_user(tls_server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server.port("submission"), timeout=10) as client:
        client.starttls(context=context())
        client.ehlo("c")
        client.user, client.password = "alice", PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235
        # Authenticated: a non-local recipient is accepted (it waits in the hold queue).
        assert client.sendmail("alice@example.test", ["far@elsewhere.test"], MESSAGE) == {}


def test_implicit_tls_listener(tls_server: RunningServer) -> None:
    port = tls_server.port("smtps")
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=context()) as client:
        client.ehlo("c")
        assert client.has_extn("auth") and not client.has_extn("starttls")
        client.login("alice", PASSWORD)
        assert client.sendmail("alice@example.test", ["alice@example.test"], MESSAGE) == {}
    tls_server.wait_delivered(1)


def test_submission_listener_needs_a_certificate(data_dir: Path) -> None:
    with (
        pytest.raises(ValueError, match="tls_cert"),
        run_server(data_dir, submission_listen=["127.0.0.1:0"]),
    ):
        pass


def _auth(port: int, password: str, source: str = "127.0.0.1") -> int:
    """One AUTH PLAIN over implicit TLS from ``source``: its reply code."""
    token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, timeout=10, context=context(), source_address=(source, 0)
    ) as client:
        client.ehlo("c")
        return client.docmd("AUTH", f"PLAIN {token}")[0]


def _throttled(limit: str) -> float:
    labels = {"listener": "smtps", "limit": limit}
    return REGISTRY.get_sample_value("lanalyze_smtp_auth_throttled_total", labels) or 0.0


def _server(data_dir: Path, tls_pair: tuple[Path, Path], **limits: int) -> Any:
    cert, key = tls_pair
    return run_server(
        data_dir,
        tls_cert=str(cert),
        tls_key=str(key),
        smtps_listen=["127.0.0.1:0"],
        users=[
            {"name": "alice", "password_hash": password_hash(), "addresses": ["alice@example.test"]}
        ],
        **limits,
    )


def test_auth_failures_are_throttled_per_client(
    data_dir: Path, tls_pair: tuple[Path, Path]
) -> None:
    """Issue 12.11: failures count across connections; past the limit the answer is 454 without
    a password check (even for the right password), counted; other clients are not affected."""
    with _server(data_dir, tls_pair, auth_failures_per_client=2) as running:
        port = running.port("smtps")
        before = _throttled("client")
        assert [_auth(port, "wrong"), _auth(port, "wrong")] == [535, 535]
        assert _auth(port, "wrong") == 454
        assert _auth(port, PASSWORD) == 454
        assert _throttled("client") == before + 2
        assert _auth(port, PASSWORD, source="127.0.0.2") == 235  # another address


def test_auth_failures_are_throttled_globally(data_dir: Path, tls_pair: tuple[Path, Path]) -> None:
    with _server(data_dir, tls_pair, auth_failures_total=3) as running:
        port = running.port("smtps")
        before = _throttled("global")
        codes = [_auth(port, "wrong", source=f"127.0.0.{n}") for n in (2, 3, 4)]
        assert codes == [535, 535, 535]
        assert _auth(port, PASSWORD, source="127.0.0.5") == 454
        assert _throttled("global") == before + 1


def test_client_throttle_window_and_memory() -> None:
    throttle = ClientThrottle(per_client=2, total=5, window=10, max_clients=3)
    throttle.failed("a", now=0)
    throttle.failed("a", now=1)
    assert throttle.blocked("a", now=2) == "client" and throttle.blocked("b", now=2) is None
    assert throttle.blocked("a", now=10.5) is None  # the first failure slid out
    for client in "bcdef":  # five in the window (the first two slid out)
        throttle.failed(client, now=11)
    assert throttle.blocked("z", now=11) == "global"
    assert len(throttle.clients._failures) <= 3


PAD = "".join(f"X-Pad-{i:05d}: {'p' * 60}\r\n" for i in range(1000))  # ~75 KB of header


@pytest.mark.parametrize(
    ("header", "refusal"),
    [
        # Issue 12.3: the From: after 64 KiB of header was never read.
        (PAD + "From: ceo@victim.example\r\n", "From: header address not owned"),
        # Only the first From: field was checked; several From: fields are refused outright.
        ("From: alice@example.test\r\nFrom: ceo@victim.example\r\n", "From: header repeated"),
        ("From: alice@example.test\r\nFrom: alice@example.test\r\n", "From: header repeated"),
        ("From: alice@example.test\r\nSender: ceo@victim.example\r\n", "Sender: not owned"),
        ("From: alice@example.test, ceo@victim.example\r\n", "From: header address not owned"),
        ("From: ceo\r\n", "From: header address not owned"),
        (
            "From: alice@example.test\r\nSender: " + "\r\n ".join(["x" * 70] * 250) + "\r\n",
            "too long",
        ),
    ],
)
def test_submission_checks_every_from_and_sender_field(
    tls_server: RunningServer, header: str, refusal: str
) -> None:
    message = f"{header}To: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", tls_server.port("submission"), timeout=10) as client:
        client.starttls(context=context())
        client.login("alice", PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@example.test", ["bob@example.test"], message)
        assert refused.value.smtp_code == 553
        assert refusal in refused.value.smtp_error.decode()
        # The session goes on: an honest message with the same padding is accepted.
        honest = f"{PAD}From: Alice <alice@example.test>\r\nSender: alice@example.test\r\n"
        honest += "To: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
        assert client.sendmail("alice@example.test", ["bob@example.test"], honest) == {}
