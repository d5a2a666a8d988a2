"""Real SMTP clients against the server: swaks (plain, pipelining, STARTTLS+AUTH, implicit
TLS) and Postfix's smtp-source (new connection per message and reused)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import require_tool
from tests.mail.conftest import PASSWORD, RunningServer


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("swaks")
    return subprocess.run(
        [tool, "--timeout", "20", *args], capture_output=True, text=True, timeout=60
    )


def test_swaks_plain_and_pipelined(tls_server: RunningServer) -> None:
    base = [
        "--server",
        f"127.0.0.1:{tls_server.port()}",
        "--from",
        "x@remote.test",
        "--to",
        "alice@example.test",
    ]
    result = swaks(*base, "--header", "Subject: from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: queued as" in result.stdout
    result = swaks(*base, "--pipeline")
    assert result.returncode == 0, result.stdout + result.stderr
    messages = tls_server.wait_delivered(2)
    assert any(b"Subject: from swaks" in m for m in messages)


def test_swaks_starttls_auth_on_submission(tls_server: RunningServer) -> None:
    result = swaks(
        "--server",
        f"127.0.0.1:{tls_server.port('submission')}",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@example.test",
        "--to",
        "bob@example.test",
        "--header",
        "From: alice@example.test",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout
    tls_server.wait_delivered(1, mailbox="bob@example.test")


def test_swaks_implicit_tls_auth_login(tls_server: RunningServer) -> None:
    result = swaks(
        "--server",
        f"127.0.0.1:{tls_server.port('smtps')}",
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        "--from",
        "alice@example.test",
        "--to",
        "alice@example.test",
        "--header",
        "From: alice@example.test",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tls_server.wait_delivered(1)


@pytest.mark.parametrize("reuse", [False, True])
def test_smtp_source(tls_server: RunningServer, reuse: bool) -> None:
    tool = require_tool("smtp-source")
    args = [
        tool,
        "-s",
        "5",
        "-m",
        "60",
        "-l",
        "4096",
        "-f",
        "x@remote.test",
        "-t",
        "alice@example.test",
    ]
    if reuse:
        args.append("-d")
    result = subprocess.run(
        [*args, f"127.0.0.1:{tls_server.port()}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    messages = tls_server.wait_delivered(60)
    assert len(messages) == 60
    assert all(m.startswith(b"Return-Path: <x@remote.test>\n") for m in messages)
